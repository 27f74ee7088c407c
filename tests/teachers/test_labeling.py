"""Cascade labeling in shards: accounting, resume after a crash, exactly-once output."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from unisup.schemas import DataValidationError, validate
from unisup.teachers.backends import InProcessBackend
from unisup.teachers.labeling import label_pairs, read_labels


class CrashingBackend:
    """The real in-process backend, which dies (like a killed server) after ``calls`` predictions."""

    name = "inprocess"

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def wait_ready(self, stages):
        self.inner.wait_ready(stages)

    def predict(self, stage, queries, items):
        if self.calls == 0:
            raise ConnectionError("backend went away")
        self.calls -= 1
        return self.inner.predict(stage, queries, items)


@pytest.fixture(scope="module")
def pairs(tiny_sample, tmp_path_factory):
    table = pacsv.read_csv(
        tiny_sample["judgments"], convert_options=pacsv.ConvertOptions(column_types={"product_id": pa.string()})
    )
    rows = table.select(["query", "product_id"]).slice(0, 60).rename_columns(["query", "item_id"]).to_pylist()
    bad = [
        {"query": rows[0]["query"], "item_id": rows[0]["item_id"]},  # duplicate
        {"query": "laptop", "item_id": "no-such-item"},
        {"query": " ", "item_id": rows[1]["item_id"]},
    ]
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows + bad), path)
    return path


def test_label_pairs_accounts_for_every_row(pairs, teacher_config, trained_teachers, tmp_path):
    backend = InProcessBackend(trained_teachers["repository"])
    report = label_pairs(str(pairs), str(tmp_path / "out"), teacher_config, backend)
    assert report["rows_in"] == 63 and report["labeled"] == 60 and report["quarantined"] == 3
    assert report["quarantine_reasons"] == {
        "duplicate (query, item_id)": 1,
        "item_id not in the catalog": 1,
        "missing query": 1,
    }
    labels = read_labels(str(tmp_path / "out"))
    validate(labels, "labels")
    names = ["features", "fast", "precise"]
    assert labels.num_rows == 60 and set(labels["stage"].to_pylist()) <= set(names)
    assert report["pairs_per_stage"]["features"] == 60
    assert report["pairs_per_stage"]["precise"] == report["decided_per_stage"]["precise"]
    scores = labels["stage_scores"].to_pylist()
    for stage, stage_scores in zip(labels["stage"].to_pylist(), scores):
        decided = names.index(stage)  # every stage up to the deciding one scored the pair, no later one
        assert [s is not None for s in stage_scores] == [j <= decided for j in range(3)]
    quarantine = pq.read_table(tmp_path / "out" / "quarantine.parquet")
    assert sorted(quarantine["source_row"].to_pylist()) == [60, 61, 62]


def test_rerun_after_a_crash_resumes_and_labels_each_pair_once(pairs, teacher_config, trained_teachers, tmp_path):
    from unisup.config import load_config

    cfg = load_config("local", [])
    cfg.data, cfg.teachers = teacher_config.data, teacher_config.teachers
    cfg.labeling.shard_size = 16
    inner = InProcessBackend(trained_teachers["repository"])
    out = str(tmp_path / "out")
    with pytest.raises(ConnectionError):
        label_pairs(str(pairs), out, cfg, CrashingBackend(inner, calls=3))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert 1 <= len(manifest["shards"]) < 4
    done_before = len(manifest["shards"])
    report = label_pairs(str(pairs), out, cfg, inner)
    assert report["shards"] == 4 and report["shards_resumed"] == done_before
    assert report["shards_labeled_now"] == 4 - done_before
    labels = read_labels(out)
    keys = list(zip(labels["query"].to_pylist(), labels["item_id"].to_pylist()))
    assert len(keys) == len(set(keys)) == 60
    fresh = label_pairs(str(pairs), str(tmp_path / "fresh"), cfg, inner)
    assert fresh["shards_resumed"] == 0
    np.testing.assert_allclose(
        np.array(read_labels(str(tmp_path / "fresh"))["probs"].to_pylist()),
        np.array(labels["probs"].to_pylist()),
        atol=1e-5,
    )
    cfg.labeling.shard_size = 32
    with pytest.raises(ValueError, match="other pairs or settings"):
        label_pairs(str(pairs), out, cfg, inner)


def test_bad_pairs_file_is_named(teacher_config, trained_teachers, tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["laptop"], "item": ["1"]}), path)
    with pytest.raises(DataValidationError, match=r"pairs \(.*pairs.parquet\): column 'item_id'"):
        label_pairs(str(path), str(tmp_path / "out"), teacher_config, InProcessBackend(trained_teachers["repository"]))


@pytest.mark.triton
def test_triton_local_backend_serves_the_teachers_it_is_given(
    tritonserver_available, trained_teachers, teacher_config, tmp_path
):
    from dataclasses import replace

    from unisup.teachers.labeling import label_pairs, serving_backend

    cfg = replace(teacher_config, labeling=replace(teacher_config.labeling, backend="triton_local"))
    pairs = pa.table({"query": ["usb hub", "laptop"], "item_id": cfg_items(cfg, 2)})
    with serving_backend(cfg, trained_teachers["repository"]) as backend:
        report = label_pairs(pairs, str(tmp_path / "out"), cfg, backend)
    assert report["backend"].startswith("triton_local (tritonserver at 127.0.0.1:")
    assert report["labeled"] == 2


def _triton_local(cfg, fallback: bool):
    from dataclasses import replace

    return replace(cfg, labeling=replace(cfg.labeling, backend="triton_local", triton_local_fallback=fallback))


def test_triton_local_without_a_server_fails_clearly(trained_teachers, teacher_config, monkeypatch):
    from unisup.errors import ServingError
    from unisup.serving import triton_server
    from unisup.teachers.labeling import serving_backend

    monkeypatch.setattr(triton_server, "pytriton_server_dir", lambda: None)
    cfg = _triton_local(teacher_config, fallback=False)
    with pytest.raises(ServingError, match=r"tritonserver not found.*labeling.triton_local_fallback=true"):
        with serving_backend(cfg, trained_teachers["repository"]):
            pass


def test_triton_local_falls_back_in_process_only_when_allowed_and_records_it(
    trained_teachers, teacher_config, tmp_path, monkeypatch, caplog
):
    from unisup.serving import triton_server
    from unisup.teachers.labeling import label_pairs, serving_backend

    monkeypatch.setattr(triton_server, "pytriton_server_dir", lambda: None)
    cfg = _triton_local(teacher_config, fallback=True)
    pairs = pa.table({"query": ["usb hub"], "item_id": cfg_items(cfg, 1)})
    with caplog.at_level("WARNING", logger="unisup.teachers.labeling"):
        with serving_backend(cfg, trained_teachers["repository"]) as backend:
            report = label_pairs(pairs, str(tmp_path / "out"), cfg, backend)
    assert "LABELING FALLBACK" in caplog.text and "labeling.triton_local_fallback=true" in caplog.text
    assert report["backend"].startswith("inprocess (fallback: no local tritonserver: tritonserver not found")
    assert report["fallback"].startswith("triton_local -> inprocess: tritonserver not found")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["fallback"] == report["fallback"]
    assert report["labeled"] == 1


@pytest.mark.triton
def test_triton_local_fails_when_a_model_does_not_load(tritonserver_available, teacher_config, tmp_path):
    from unisup.errors import ServingError
    from unisup.teachers.labeling import serving_backend

    model = tmp_path / "repository" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 8\n'
        'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    (model / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('weights missing')\n"
    )
    cfg = _triton_local(teacher_config, fallback=False)
    with pytest.raises(ServingError, match="tritonserver exited"):
        with serving_backend(cfg, str(tmp_path / "repository")):
            pass


def cfg_items(cfg, n: int) -> list[str]:
    from unisup.data.dataset import load_catalog

    return load_catalog(cfg.data.catalog_uri).accepted["product_id"].to_pylist()[:n]


def test_calibrated_rule_comes_from_the_teachers_repository(teacher_config, trained_teachers, tmp_path):
    from unisup.teachers.labeling import escalation_rule

    calibration = json.loads((Path(trained_teachers["repository"]) / "escalation.json").read_text())
    assert calibration == trained_teachers["escalation"]
    rule = escalation_rule(teacher_config, trained_teachers["repository"])
    best = max(("max_prob", "boundary"), key=lambda r: calibration[r]["agreement"])
    assert rule.rule == best
    assert rule.max_prob_threshold == calibration[best].get("max_prob_threshold", 0.0)
    assert rule.boundary_margin == calibration[best].get("boundary_margin", 0.0)
    with pytest.raises(ValueError, match="escalation.json"):
        escalation_rule(teacher_config, str(tmp_path))
