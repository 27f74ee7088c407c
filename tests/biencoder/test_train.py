"""The training loop on the tiny encoder and the tiny sample's lists: validation, early
stopping, export, and resume-after-kill giving exactly the uninterrupted result."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from unisup.biencoder.tower import item_fields, load_biencoder, off_the_shelf_biencoder
from unisup.biencoder.train import group_lists, latest_checkpoint, train, train_biencoder
from unisup.config import load_config
from unisup.data.catalog import DEFAULT_FIELDS
from unisup.data.sample import load_dataset
from unisup.data.tables import read_table
from unisup.schemas import DataValidationError

TINY_TRAINING = [
    "training.lists_per_batch=3",
    "training.items_per_list=8",
    "training.max_epochs=3",
    "training.checkpoint_every=2",
    "training.validation_distractors=50",
    "training.learning_rate=0.001",
    "training.query_max_length=12",
    "training.item_max_length=24",
    "training.item_fields=[title, brand]",
    "training.patience=5",
]


@pytest.fixture(scope="module")
def setup(tiny_overrides, tiny_encoder_path, tiny_training_lists):
    config = load_config("local", tiny_overrides + TINY_TRAINING + [f"training.encoder_path={tiny_encoder_path}"])
    dataset = load_dataset(config.data)
    return config, dataset, read_table(str(tiny_training_lists))


class Killed(RuntimeError):
    pass


def _run(setup, tmp, name, on_step=None, **changes):
    config, dataset, lists = setup
    cfg = dataclasses.replace(config.training, **changes)
    return train_biencoder(
        lists,
        dataset.catalog,
        dataset.qrels("validation"),
        cfg,
        tmp / name,
        tmp / f"{name}-work",
        config.data.relevance_threshold,
        progress=False,
        on_step=on_step,
    )


def _weights(model_dir):
    return load_file(str(model_dir / "query_tower" / "model.safetensors"))


def test_unknown_items_are_named(setup):
    config, dataset, lists = setup
    bad = lists.set_column(1, "item_id", pa.array(["nope"] + lists["item_id"].to_pylist()[1:]))
    with pytest.raises(
        DataValidationError,
        match=r"training_lists \(training_lists\): column 'item_id', row 1: item_id not in the catalog",
    ):
        group_lists(bad, dataset.catalog["product_id"].to_pylist(), 2)


def test_training_validates_each_epoch_and_exports(setup, tiny_encoder_path, tmp_path):
    result = _run(setup, tmp_path, "model")
    assert result.steps == 6 and result.epochs == 3  # 6 train lists, 3 per batch
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert all(0.0 <= h["validation_ndcg@10"] <= 1.0 for h in result.history)
    assert result.best_metric == max(h["validation_ndcg@10"] for h in result.history)
    assert result.items_per_second > 0 and result.lists_per_second > 0
    query, item = load_biencoder(tmp_path / "model")
    assert query is item  # shared towers by default
    vectors = query.encode(["red wine glass", "sofa"])
    assert vectors.shape == (2, 32) and abs(float((vectors**2).sum(1)[0]) - 1) < 1e-5
    initial = load_file(str(tiny_encoder_path / "model.safetensors"))
    trained = _weights(tmp_path / "model")
    assert set(initial) == set(trained) and any(not torch.equal(trained[k], initial[k]) for k in trained)
    # the index embeds the catalog with the text the item tower was trained on
    assert item_fields(tmp_path / "model") == tuple(setup[0].training.item_fields) == ("title", "brand")
    assert item_fields(off_the_shelf_biencoder(tmp_path / "untrained", tiny_encoder_path)) == DEFAULT_FIELDS


def test_resume_after_kill_gives_the_uninterrupted_result(setup, tmp_path):
    uninterrupted = _run(setup, tmp_path, "a")

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed(f"killed at step {step}")

    with pytest.raises(Killed):
        _run(setup, tmp_path, "b", on_step=kill_at_5)
    assert latest_checkpoint(tmp_path / "b-work" / "checkpoints").name == "step-00000004.pt"
    resumed = _run(setup, tmp_path, "b")
    assert resumed.resumed_from_step == 4
    assert resumed.history == uninterrupted.history
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final_a = torch.load(latest_checkpoint(tmp_path / "a-work" / "checkpoints"), weights_only=False)["model"]
    final_b = torch.load(latest_checkpoint(tmp_path / "b-work" / "checkpoints"), weights_only=False)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_a_checkpoint_of_another_config_is_refused(setup, tmp_path):
    _run(setup, tmp_path, "m", max_steps=2)
    with pytest.raises(ValueError, match="different training config"):
        _run(setup, tmp_path, "m", max_steps=2, learning_rate=0.01)


def test_early_stopping_without_improvement(setup, tmp_path):
    result = _run(setup, tmp_path, "flat", learning_rate=0.0, patience=1, max_epochs=5)
    assert result.stopped_early and result.epochs == 2 and result.best_step == 2


def test_separate_towers_projection_and_moppr(setup, tmp_path):
    result = _run(setup, tmp_path, "sep", shared_towers=False, projection_dim=16, loss="moppr", max_steps=2)
    assert result.steps == 2
    query, item = load_biencoder(tmp_path / "sep")
    assert query is not item and query.dim == item.dim == 16
    assert (tmp_path / "sep" / "item_tower" / "projection.safetensors").exists()


def test_train_stage_exports_the_triton_query_encoder(setup, tiny_training_lists, tmp_path):
    config = setup[0]
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, max_steps=2, loss="listwise_kl"))
    result = train(
        str(tiny_training_lists),
        str(tmp_path / "model"),
        config,
        triton_repository=str(tmp_path / "repo"),
        work_dir=str(tmp_path / "work"),
        progress=False,
    )
    assert result.triton_model == "query_encoder/1"
    assert (tmp_path / "repo" / "query_encoder" / "1" / "query_tower" / "tower.json").exists()
