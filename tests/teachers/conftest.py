"""Teacher fixtures: tiny trained teachers in a Triton repository, and a real tritonserver on it."""

from __future__ import annotations

import json

import pytest

from unisup.config import load_config
from unisup.serving.triton_server import triton_server


def tiny_teacher_overrides(encoder_path, repository) -> list[str]:
    """Three tiny stages of rising cost: the feature stage, then two cross-encoders on the tiny
    encoder, a few steps each; the last one stacked on the features."""
    stages = [
        {"name": "features", "kind": "ordinal_features"},
        {
            "name": "fast",
            "base_model": str(encoder_path),
            "num_layers": 1,
            "max_length": 24,
            "item_fields": ["title", "brand"],
            "epochs": 2,
            "batch_size": 16,
            "max_steps": 12,
            "learning_rate": 1e-3,
        },
        {
            "name": "precise",
            "base_model": str(encoder_path),
            "num_layers": 0,
            "max_length": 64,
            "item_fields": ["title", "brand", "description"],
            "attributes": 3,
            "epochs": 1,
            "batch_size": 16,
            "max_steps": 8,
            "learning_rate": 1e-3,
            "stack_on": "features",
        },
    ]
    return [
        f"teachers.stages={json.dumps(stages)}",
        f"teachers.repository_uri={repository}",
        "teachers.max_train_pairs=160",
        "teachers.max_validation_pairs=80",
    ]


@pytest.fixture(scope="session")
def teacher_overrides(tiny_overrides, tiny_encoder_path, tmp_path_factory) -> list[str]:
    repository = tmp_path_factory.mktemp("teacher_repository")
    return tiny_overrides + tiny_teacher_overrides(tiny_encoder_path, repository)


@pytest.fixture(scope="session")
def teacher_config(teacher_overrides):
    return load_config("local", teacher_overrides)


@pytest.fixture(scope="session")
def trained_teachers(teacher_config) -> dict:
    """Train the tiny teachers once per session; yields the training report."""
    from unisup.teachers.training import train_teachers

    return train_teachers(
        teacher_config.teachers,
        teacher_config.data,
        teacher_config.teachers.repository_uri,
        channels_cfg=teacher_config.channels,
    )


@pytest.fixture(scope="session")
def triton_teachers(tritonserver_available, trained_teachers):
    """The real tritonserver serving the tiny teachers, every model ready; yields the server."""
    with triton_server(trained_teachers["repository"]) as server:
        yield server
