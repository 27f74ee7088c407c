"""The training loop on the tiny encoder and the tiny sample's lists: the frozen item tower
(only the query tower trains), validation of the start and of every epoch, early stopping,
export, and resume-after-kill giving exactly the uninterrupted result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from unisup.biencoder.tower import (
    FROZEN_ITEM_TOWER,
    PROJECTION_FILE,
    item_fields,
    load_biencoder,
    off_the_shelf_biencoder,
)
from unisup.biencoder.train import group_lists, latest_checkpoint, record_path, train, train_biencoder
from unisup.config import ConfigError, load_config
from unisup.data.catalog import DEFAULT_FIELDS
from unisup.data.dataset import load_dataset
from unisup.data.tables import read_table, write_table
from unisup.errors import ArtifactMismatch, InputError
from unisup.schemas import DataValidationError
from unisup.storage import content_digest

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


def _run(setup, tmp, name, on_step=None, lists=None, qrels=None, catalog=None, work=None, resume=True, **changes):
    """Train into ``tmp/name`` with checkpoints in ``tmp/<work or name-work>``; the setup's lists,
    validation judgments and catalog unless given."""
    config, dataset, all_lists = setup
    cfg = dataclasses.replace(config.training, **changes)
    return train_biencoder(
        all_lists if lists is None else lists,
        dataset.catalog if catalog is None else catalog,
        dataset.qrels("validation") if qrels is None else qrels,
        cfg,
        tmp / name,
        tmp / (work or f"{name}-work"),
        config.data.relevance_threshold,
        resume=resume,
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


def test_the_item_adapter_starts_as_the_identity_and_trains_over_the_frozen_encoder(setup, tiny_encoder_path, tmp_path):
    plain = _run(setup, tmp_path, "plain")
    adapted = _run(setup, tmp_path, "adapted", item_adapter=True, adapter_learning_rate=0.01)
    assert adapted.start_metric == pytest.approx(plain.start_metric, abs=1e-9)  # the identity at the start
    initial = load_file(str(tiny_encoder_path / "model.safetensors"))
    assert not _changed(initial, _weights(tmp_path / "adapted", "item_tower"))  # the encoder stays the start's
    adapter = load_file(str(tmp_path / "adapted" / "item_tower" / PROJECTION_FILE))["linear.weight"]
    assert adapter.shape == (32, 32) and not torch.allclose(adapter, torch.eye(32), atol=1e-4)
    record = json.loads((tmp_path / "adapted" / "biencoder.json").read_text())[FROZEN_ITEM_TOWER]
    assert record["item_adapter"] is True
    assert (
        record["weights_digest"]
        == json.loads((tmp_path / "plain" / "biencoder.json").read_text())[FROZEN_ITEM_TOWER]["weights_digest"]
    )
    _, item = load_biencoder(tmp_path / "adapted")
    assert item.dim == 32 and item.projection is not None


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
    with pytest.raises(ArtifactMismatch, match="different training config"):
        _run(setup, tmp_path, "m", max_steps=2, learning_rate=0.01)


def _reversed_targets(lists: pa.Table) -> pa.Table:
    """Other lists of the same queries (as many lists, as many rows): the targets in reverse order."""
    column = lists.schema.get_field_index("target")
    return lists.set_column(column, "target", pa.array(lists["target"].to_numpy()[::-1]))


def _retitled(catalog: pa.Table) -> pa.Table:
    column = catalog.schema.get_field_index("title")
    return catalog.set_column(column, "title", pa.array([f"{t} (new)" for t in catalog["title"].to_pylist()]))


@pytest.mark.parametrize(
    "changed",
    [
        {"lists": "reversed targets"},
        {"qrels": "one validation query fewer"},
        {"catalog": "other item titles"},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_a_work_dir_of_another_job_is_never_resumed(setup, tmp_path, changed):
    """Same config and number of lists, other inputs: the checkpoint is refused, and the job
    started over (resume=False) exports exactly what it exports in a work dir of its own."""
    _, dataset, lists = setup
    qrels = dataset.qrels("validation")
    other = {
        "lists": {"lists": _reversed_targets(lists)},
        "qrels": {"qrels": dict(sorted(qrels.items())[1:])},
        "catalog": {"catalog": _retitled(dataset.catalog)},
    }[next(iter(changed))]
    first = _run(setup, tmp_path, "first", max_steps=2)
    with pytest.raises(ArtifactMismatch, match=r"step-00000002\.pt: written by a run with a different training config"):
        _run(setup, tmp_path, "second", work="first-work", max_steps=2, **other)
    second = _run(setup, tmp_path, "second", work="first-work", resume=False, max_steps=2, **other)
    alone = _run(setup, tmp_path, "alone", max_steps=2, **other)
    assert second.resumed_from_step == 0 and second.history == alone.history
    weights = {name: _weights(tmp_path / name) for name in ("first", "second", "alone")}
    assert all(torch.equal(weights["second"][k], weights["alone"][k]) for k in weights["alone"])
    # other judgments validate differently, other lists or item texts train differently
    assert second.history != first.history or _changed(weights["first"], weights["second"])


def test_stale_best_weights_of_another_job_are_never_exported(setup, tmp_path):
    """A run without validation exports its own last weights, not the best.pt an earlier job
    left in the work dir."""
    other = _reversed_targets(setup[2])
    _run(setup, tmp_path, "first", max_steps=2)
    assert (tmp_path / "first-work" / "best.pt").exists()
    _run(setup, tmp_path, "second", work="first-work", lists=other, qrels={}, resume=False, max_steps=2)
    _run(setup, tmp_path, "alone", lists=other, qrels={}, max_steps=2)
    second, alone = _weights(tmp_path / "second"), _weights(tmp_path / "alone")
    assert all(torch.equal(second[k], alone[k]) for k in alone)
    assert not (tmp_path / "first-work" / "best.pt").exists()


class Payload:
    """Unpickling it touches ``marker``: a stand-in for the code a planted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _plant(path: Path, marker: Path) -> None:
    """A pickle checkpoint at ``path`` whose unpickling runs code (checked once, then undone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_a_planted_checkpoint_without_a_record_is_never_opened(setup, tmp_path):
    planted, marker = tmp_path / "p-work" / "checkpoints" / "step-00000099.pt", tmp_path / "marker"
    _plant(planted, marker)
    result = _run(setup, tmp_path, "p", max_steps=2)
    assert not marker.exists()
    assert result.resumed_from_step == 0 and result.steps == 2  # started fresh: no checkpoint of this run
    assert not planted.exists()  # a run that does not resume clears the work dir


def test_a_planted_checkpoint_with_a_forged_record_is_never_unpickled(setup, tmp_path):
    _run(setup, tmp_path, "f", max_steps=2)
    checkpoint, marker = latest_checkpoint(tmp_path / "f-work" / "checkpoints"), tmp_path / "marker"
    _plant(checkpoint, marker)
    with pytest.raises(ArtifactMismatch, match="step-00000002.pt: missing or changed since it was written"):
        _run(setup, tmp_path, "f", max_steps=2)
    record = json.loads(record_path(checkpoint).read_text())
    record_path(checkpoint).write_text(json.dumps({**record, "sha256": content_digest(str(checkpoint))}))
    with pytest.raises(ArtifactMismatch, match="step-00000002.pt: holds more than weights, refused to load it"):
        _run(setup, tmp_path, "f", max_steps=2)
    assert not marker.exists()


def test_an_empty_lists_table_is_an_input_error(setup, tmp_path):
    with pytest.raises(InputError, match="no training lists: the training-lists table is empty"):
        _run(setup, tmp_path, "empty", lists=setup[2].slice(0, 0))


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.device=tpu", "training.device must be auto, cpu or cuda, got 'tpu'"),
        ("training.loss=hinge", "training.loss must be one of listwise_ce, listwise_kl, moppr, got 'hinge'"),
        ("training.lists_per_batch=0", "training.lists_per_batch must be >= 1, got 0"),
        ("training.validation_k=0", "training.validation_k must be >= 1, got 0"),
        ("training.projection_dim=16", "training.projection_dim needs training.freeze_item_tower=false"),
        (
            "training.freeze_item_tower=false training.item_adapter=true",
            "training.item_adapter needs training.freeze_item_tower=true",
        ),
    ],
)
def test_bad_training_settings_are_config_errors_before_any_input_is_read(tmp_path, override, message):
    config = load_config("local", [f"data.catalog_uri={tmp_path / 'absent.parquet'}", *override.split()])
    with pytest.raises(ConfigError, match=message):
        train(str(tmp_path / "absent-lists"), str(tmp_path / "model"), config, progress=False)
    assert not list(tmp_path.iterdir())


def test_the_train_stage_names_the_file_and_rows_of_items_not_in_the_catalog(setup, tmp_path):
    lists = setup[2]
    bad = lists.set_column(1, "item_id", pa.array(["nope"] + lists["item_id"].to_pylist()[1:]))
    write_table(bad, str(tmp_path / "lists.parquet"))
    with pytest.raises(DataValidationError) as raised:
        train(str(tmp_path / "lists.parquet"), str(tmp_path / "model"), setup[0], progress=False)
    assert str(raised.value).startswith(
        f"training_lists ({tmp_path / 'lists.parquet'}): column 'item_id', row 1 [rule: item_known]: item_id not in"
    )
    assert not (tmp_path / "model").exists()


def test_early_stopping_without_improvement(setup, tmp_path):
    result = _run(setup, tmp_path, "flat", learning_rate=0.0, patience=1, max_epochs=5)
    assert result.stopped_early and result.epochs == 2 and result.best_step == 2
    assert result.best_metric == result.start_metric and not result.below_start  # lr 0: still the start


def test_below_start_is_reported(setup, tmp_path, caplog):
    result = _run(setup, tmp_path, "worse", learning_rate=0.5, max_epochs=1)
    assert result.best_metric < result.start_metric and result.below_start
    assert "below the start" in caplog.text


def test_separate_towers_projection_and_moppr(setup, tmp_path):
    with pytest.raises(ConfigError, match="projection_dim needs training.freeze_item_tower=false"):
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
    assert (tmp_path / "sep" / "item_tower" / PROJECTION_FILE).exists()


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


def test_the_trained_model_loads_in_sentence_transformers_and_its_card_holds_the_run(setup, tmp_path):
    from sentence_transformers import SentenceTransformer

    from unisup.model_card import front_matter

    result = _run(setup, tmp_path, "card", max_epochs=2)
    query, item = load_biencoder(tmp_path / "card")
    texts = [ql.query for ql in group_lists(setup[2], setup[1].catalog["product_id"].to_pylist(), 2)]
    model = SentenceTransformer(str(tmp_path / "card"), device="cpu")
    assert np.abs(model.encode_query(texts) - query.encode(texts)).max() < 1e-5
    assert np.abs(model.encode_document(texts) - item.encode(texts)).max() < 1e-5
    card = front_matter((tmp_path / "card" / "README.md").read_text())
    assert card["library_name"] == "sentence-transformers" and card["license"] == "apache-2.0"
    assert "base_model" not in card  # the tiny encoder is not the packaged MiniLM
    metrics = {m["name"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    k = setup[0].training.validation_k
    assert metrics[f"best validation nDCG@{k}"] == pytest.approx(result.best_metric, abs=1e-6)
    assert metrics[f"start validation nDCG@{k}"] == pytest.approx(result.start_metric, abs=1e-6)
    best_epoch = next(h["epoch"] for h in result.history if h["step"] == result.best_step)
    assert card["training"] == {
        "seed": setup[0].training.seed,
        "steps": result.steps,
        "epochs": result.epochs,
        "best_step": result.best_step,
        "best_epoch": best_epoch,
        "below_start": result.below_start,
        "stopped_early": result.stopped_early,
    }
