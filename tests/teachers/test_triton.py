"""Labeling through the real tritonserver: parity with in-process, and kill-and-resume."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from unisup.teachers.backends import BackendUnavailable, InProcessBackend, TritonBackend
from unisup.teachers.labeling import label_pairs, read_labels

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def judged_pairs(tiny_sample, tmp_path_factory):
    table = pacsv.read_csv(
        tiny_sample["judgments"], convert_options=pacsv.ConvertOptions(column_types={"product_id": pa.string()})
    )
    path = tmp_path_factory.mktemp("triton_pairs") / "pairs.parquet"
    pq.write_table(table.select(["query", "product_id"]).slice(0, 96), path)
    return path


def _backend(server, **kwargs):
    return TritonBackend(server.grpc_url, batch_size=8, concurrency=4, timeout_s=30, **kwargs)


def test_triton_and_in_process_give_the_same_labels(
    triton_teachers, judged_pairs, teacher_config, trained_teachers, tmp_path
):
    served = label_pairs(str(judged_pairs), str(tmp_path / "triton"), teacher_config, _backend(triton_teachers))
    local = label_pairs(
        str(judged_pairs), str(tmp_path / "local"), teacher_config, InProcessBackend(trained_teachers["repository"])
    )
    assert served["backend"] == "triton" and served["labeled"] == local["labeled"] == 96
    a, b = read_labels(str(tmp_path / "triton")), read_labels(str(tmp_path / "local"))
    assert a["grade"].to_pylist() == b["grade"].to_pylist() and a["stage"].to_pylist() == b["stage"].to_pylist()
    np.testing.assert_allclose(np.array(a["probs"].to_pylist()), np.array(b["probs"].to_pylist()), atol=1e-5)


def test_unknown_model_is_not_ready(triton_teachers):
    backend = TritonBackend(triton_teachers.grpc_url, ready_timeout_s=1)
    with pytest.raises(BackendUnavailable, match="no_such_stage"):
        backend.wait_ready(["fast", "no_such_stage"])


def test_server_killed_mid_run_then_restarted_resumes_exactly_once(
    triton_teachers, judged_pairs, teacher_config, tmp_path
):
    from copy import deepcopy

    cfg = deepcopy(teacher_config)
    cfg.labeling.shard_size = 24
    out = str(tmp_path / "labels")

    def kill_after_first_shard(index):
        if index == 0:
            triton_teachers.kill()

    with pytest.raises(BackendUnavailable, match="gave up after 2 attempts"):
        label_pairs(
            str(judged_pairs),
            out,
            cfg,
            _backend(triton_teachers, retries=2, backoff_s=0.05),
            on_shard=kill_after_first_shard,
        )
    manifest = json.loads((tmp_path / "labels" / "manifest.json").read_text())
    assert list(manifest["shards"]) == ["0"]
    triton_teachers.restart()
    report = label_pairs(str(judged_pairs), out, cfg, _backend(triton_teachers))
    assert report["shards"] == 4 and report["shards_resumed"] == 1 and report["shards_labeled_now"] == 3
    labels = read_labels(out)
    keys = list(zip(labels["query"].to_pylist(), labels["item_id"].to_pylist()))
    assert len(keys) == len(set(keys)) == 96
    expected = pq.read_table(judged_pairs)
    assert set(keys) == set(zip(expected["query"].to_pylist(), expected["product_id"].to_pylist()))


def test_each_retry_after_a_deadline_doubles_it(monkeypatch):
    """A server too busy to answer within the deadline gets longer ones: labeling is later, not failed."""
    from tritonclient.utils import InferenceServerException

    backend = TritonBackend("127.0.0.1:1", timeout_s=10, retries=4, backoff_s=0.0)
    deadlines = []

    def busy_server(stage, queries, items, timeout_s):
        deadlines.append(timeout_s)
        if timeout_s < 40:  # this server needs 40 s per request
            raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
        return np.full((len(queries), 4), 0.25, np.float32)

    monkeypatch.setattr(backend, "_infer_once", busy_server)
    assert backend.predict("fast", ["usb cable"], ["a cable"]).shape == (1, 4)
    assert deadlines == [10, 20, 40]
    deadlines.clear()
    monkeypatch.setattr(backend, "retries", 2)
    with pytest.raises(BackendUnavailable, match="gave up after 2 attempts"):
        backend.predict("fast", ["usb cable"], ["a cable"])
    assert deadlines == [10, 20]
