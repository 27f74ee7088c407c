"""Every config.pbtxt the project writes parses as Triton's ModelConfig and round-trips through text_format."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from unisup.biencoder import export as biencoder_export
from unisup.config import load_config
from unisup.promotion import served_versions, triton_config
from unisup.teachers import export as teacher_export

MC = model_config_pb2.ModelConfig


def _round_trip(text: str) -> model_config_pb2.ModelConfig:
    """Parse ``text`` strictly (unknown fields raise), print it and parse it again: the same message."""
    parsed = text_format.Parse(text, MC())
    again = text_format.Parse(text_format.MessageToString(parsed), MC())
    assert again == parsed
    return parsed


def _params(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def test_query_encoder_config_round_trips_with_every_field():
    text = biencoder_export.model_config("qenc", 384, 64, 500, 2, "KIND_GPU", "/opt/site")
    config = _round_trip(text)
    assert (config.name, config.backend, config.max_batch_size) == ("qenc", "python", 64)
    [query] = config.input
    assert (query.name, query.data_type, list(query.dims)) == (
        biencoder_export.QUERY_INPUT,
        model_config_pb2.TYPE_STRING,
        [1],
    )
    [embedding] = config.output
    assert (embedding.name, embedding.data_type, list(embedding.dims)) == (
        biencoder_export.EMBEDDING_OUTPUT,
        model_config_pb2.TYPE_FP32,
        [384],
    )
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    [group] = config.instance_group
    assert (group.count, group.kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    assert _params(config) == {"python_paths": "/opt/site"}


@pytest.mark.parametrize("delay", [0, 250])
def test_teacher_config_round_trips_with_and_without_a_queue_delay(delay):
    config = _round_trip(teacher_export.model_config("fast", 4, 256, 3, "KIND_CPU", delay, "", 32))
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("query", model_config_pb2.TYPE_STRING, [1]),
        ("item", model_config_pb2.TYPE_STRING, [1]),
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("probs", [4])]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == delay
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert _params(config) == {"python_paths": "", "forward_batch_size": "32"}


def test_pushed_serving_config_round_trips_with_its_version_policy():
    cfg = load_config("local")
    text = triton_config(cfg, 32, [3, 4])
    config = _round_trip(text)
    assert config.name == cfg.promotion.model_name
    assert list(config.version_policy.specific.versions) == served_versions(text) == [3, 4]
    assert list(config.output[0].dims) == [32]


def test_written_config_files_round_trip(tiny_encoder_path, tmp_path):
    """The files the exports write, not only the text functions."""
    from unisup.biencoder.tower import Tower, save_biencoder
    from unisup.config import TeachersConfig, TrainingConfig

    tower = Tower.from_pretrained(tiny_encoder_path, max_length=16, projection_dim=8)
    model = save_biencoder(tower, tower, tmp_path / "model")
    biencoder_export.export_query_encoder(model, tmp_path / "repo", TrainingConfig(triton_model_name="qenc"))
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    teacher_export.export_repository({"fast": teacher}, tmp_path / "repo", TeachersConfig(), num_grades=4)
    written = sorted((tmp_path / "repo").glob("*/config.pbtxt"))
    assert [p.parent.name for p in written] == ["fast", "qenc"]
    for path in written:
        assert _round_trip(path.read_text()).name == path.parent.name
