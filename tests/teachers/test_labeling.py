"""Cascade labeling in shards: accounting, resume after a crash, exactly-once output."""

import json

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
    table = pacsv.read_csv(tiny_sample["judgments"], convert_options=pacsv.ConvertOptions(
        column_types={"product_id": pa.string()}))
    rows = table.select(["query", "product_id"]).slice(0, 60).rename_columns(["query", "item_id"]).to_pylist()
    bad = [{"query": rows[0]["query"], "item_id": rows[0]["item_id"]},  # duplicate
           {"query": "laptop", "item_id": "no-such-item"}, {"query": " ", "item_id": rows[1]["item_id"]}]
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows + bad), path)
    return path


def test_label_pairs_accounts_for_every_row(pairs, teacher_config, trained_teachers, tmp_path):
    backend = InProcessBackend(trained_teachers["repository"])
    report = label_pairs(str(pairs), str(tmp_path / "out"), teacher_config, backend)
    assert report["rows_in"] == 63 and report["labeled"] == 60 and report["quarantined"] == 3
    assert report["quarantine_reasons"] == {"duplicate (query, item_id)": 1, "item_id not in the catalog": 1,
                                            "missing query": 1}
    labels = read_labels(str(tmp_path / "out"))
    validate(labels, "labels")
    assert labels.num_rows == 60 and set(labels["stage"].to_pylist()) <= {"fast", "precise"}
    assert report["pairs_per_stage"]["fast"] == 60
    assert report["pairs_per_stage"]["precise"] == report["decided_per_stage"]["precise"]
    scores = labels["stage_scores"].to_pylist()
    for stage, stage_scores in zip(labels["stage"].to_pylist(), scores):
        assert stage_scores[0] is not None and (stage_scores[1] is not None) == (stage == "precise")
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
    np.testing.assert_allclose(np.array(read_labels(str(tmp_path / "fresh"))["probs"].to_pylist()),
                               np.array(labels["probs"].to_pylist()), atol=1e-5)
    cfg.labeling.shard_size = 32
    with pytest.raises(ValueError, match="other pairs or settings"):
        label_pairs(str(pairs), out, cfg, inner)


def test_bad_pairs_file_is_named(teacher_config, trained_teachers, tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["laptop"], "item": ["1"]}), path)
    with pytest.raises(DataValidationError, match=r"pairs \(.*pairs.parquet\): column 'item_id'"):
        label_pairs(str(path), str(tmp_path / "out"), teacher_config, InProcessBackend(trained_teachers["repository"]))
