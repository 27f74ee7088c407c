"""The training loop on the tiny encoder and the tiny sample's lists: the frozen item tower
(only the query tower trains), validation of the start and of every epoch, early stopping,
export, and resume-after-kill giving exactly the uninterrupted result."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from unisup.biencoder.tower import FROZEN_ITEM_TOWER, item_fields, load_biencoder, off_the_shelf_biencoder
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


def _run(setup, tmp, name, on_step=None, lists=None, **changes):
    config, dataset, all_lists = setup
    cfg = dataclasses.replace(config.training, **changes)
    return train_biencoder(
        all_lists if lists is None else lists,
        dataset.catalog,
        dataset.qrels("validation"),
        cfg,
        tmp / name,
        tmp / f"{name}-work",
        config.data.relevance_threshold,
        progress=False,
        on_step=on_step,
        embedding_cache_dir=tmp / "embedding-cache",
    )


def _weights(model_dir, tower="query_tower"):
    return load_file(str(model_dir / tower / "model.safetensors"))


def _changed(initial, trained):
    assert set(initial) == set(trained)
    return any(not torch.equal(trained[k], initial[k]) for k in trained)


def test_unknown_items_are_named(setup):
    config, dataset, lists = setup
    bad = lists.set_column(1, "item_id", pa.array(["nope"] + lists["item_id"].to_pylist()[1:]))
    with pytest.raises(
        DataValidationError,
        match=r"training_lists \(training_lists\): column 'item_id', row 1: item_id not in the catalog",
    ):
        group_lists(bad, dataset.catalog["product_id"].to_pylist(), 2)


def test_frozen_item_tower_trains_only_the_query_tower(setup, tiny_encoder_path, tmp_path):
    result = _run(setup, tmp_path, "model")
    assert result.steps == 6 and result.epochs == 3  # 6 train lists, 3 per batch
    assert [(h["epoch"], h["step"]) for h in result.history] == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert all(0.0 <= h["validation_ndcg@10"] <= 1.0 for h in result.history)
    assert result.start_metric == result.history[0]["validation_ndcg@10"]
    # the start is reported, not a candidate: the best is the best trained epoch
    assert result.best_metric == max(h["validation_ndcg@10"] for h in result.history[1:])
    assert result.below_start == (result.best_metric < result.start_metric)
    assert result.items_per_second > 0 and result.lists_per_second > 0
    query, item = load_biencoder(tmp_path / "model")
    assert query is not item and query.max_length == 12 and item.max_length == 24
    vectors = query.encode(["red wine glass", "sofa"])
    assert vectors.shape == (2, 32) and abs(float((vectors**2).sum(1)[0]) - 1) < 1e-5
    initial = load_file(str(tiny_encoder_path / "model.safetensors"))
    assert _changed(initial, _weights(tmp_path / "model"))
    assert not _changed(initial, _weights(tmp_path / "model", "item_tower"))  # the start encoder, unchanged
    manifest = json.loads((tmp_path / "model" / "biencoder.json").read_text())
    assert manifest[FROZEN_ITEM_TOWER]["max_length"] == 24
    assert manifest["training"]["below_start"] == result.below_start
    # the index embeds the catalog with the text the item tower was trained on
    assert item_fields(tmp_path / "model") == tuple(setup[0].training.item_fields) == ("title", "brand")
    assert item_fields(off_the_shelf_biencoder(tmp_path / "untrained", tiny_encoder_path)) == DEFAULT_FIELDS


def test_trained_item_tower_is_shared_and_changes(setup, tiny_encoder_path, tmp_path):
    result = _run(setup, tmp_path, "shared", freeze_item_tower=False, max_steps=2)
    assert result.steps == 2
    query, item = load_biencoder(tmp_path / "shared")
    assert query is item
    assert FROZEN_ITEM_TOWER not in json.loads((tmp_path / "shared" / "biencoder.json").read_text())
    assert _changed(load_file(str(tiny_encoder_path / "model.safetensors")), _weights(tmp_path / "shared"))


def test_frozen_loss_decreases_on_a_tiny_list_set(setup, tmp_path):
    """Every step sees the same 4 whole lists (one batch per epoch): the loss must fall."""
    lists = setup[2]
    queries = sorted(set(lists["query"].to_pylist()))[:4]
    tiny = lists.filter(pa.compute.is_in(lists["query"], value_set=pa.array(queries)))
    losses = []
    _run(
        setup,
        tmp_path,
        "fit",
        on_step=lambda step, loss: losses.append(loss),
        lists=tiny,
        lists_per_batch=4,
        items_per_list=1000,
        max_epochs=12,
        patience=100,
        warmup_fraction=0.0,
        learning_rate=0.003,
    )
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen_item_tower", "shared_towers"])
def test_resume_after_kill_gives_the_uninterrupted_result(setup, tmp_path, frozen):
    uninterrupted = _run(setup, tmp_path, "a", freeze_item_tower=frozen)

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed(f"killed at step {step}")

    with pytest.raises(Killed):
        _run(setup, tmp_path, "b", on_step=kill_at_5, freeze_item_tower=frozen)
    assert latest_checkpoint(tmp_path / "b-work" / "checkpoints").name == "step-00000004.pt"
    resumed = _run(setup, tmp_path, "b", freeze_item_tower=frozen)
    assert resumed.resumed_from_step == 4
    assert resumed.history == uninterrupted.history
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final_a = torch.load(latest_checkpoint(tmp_path / "a-work" / "checkpoints"), weights_only=True)["model"]
    final_b = torch.load(latest_checkpoint(tmp_path / "b-work" / "checkpoints"), weights_only=True)["model"]
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # a frozen run checkpoints the query tower alone
    assert any(k.startswith("item_tower.") for k in final_a) != frozen


def test_a_checkpoint_of_another_config_is_refused(setup, tmp_path):
    _run(setup, tmp_path, "m", max_steps=2)
    with pytest.raises(ValueError, match="different training config"):
        _run(setup, tmp_path, "m", max_steps=2, learning_rate=0.01)


def test_early_stopping_without_improvement(setup, tmp_path):
    result = _run(setup, tmp_path, "flat", learning_rate=0.0, patience=1, max_epochs=5)
    assert result.stopped_early and result.epochs == 2 and result.best_step == 2
    assert result.best_metric == result.start_metric and not result.below_start  # lr 0: still the start


def test_below_start_is_reported(setup, tmp_path, caplog):
    result = _run(setup, tmp_path, "worse", learning_rate=0.5, max_epochs=1)
    assert result.best_metric < result.start_metric and result.below_start
    assert "below the start" in caplog.text


def test_separate_towers_projection_and_moppr(setup, tmp_path):
    with pytest.raises(ValueError, match="projection_dim needs training.freeze_item_tower=false"):
        _run(setup, tmp_path, "frozen-projection", projection_dim=16)
    result = _run(
        setup,
        tmp_path,
        "sep",
        freeze_item_tower=False,
        shared_towers=False,
        projection_dim=16,
        loss="moppr",
        max_steps=2,
    )
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
