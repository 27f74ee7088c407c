"""Promotion and the versioned A/B config against gcp-storage-emulator with the real client."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import pytest

from unisup import storage
from unisup.config import load_config
from unisup.promotion import NotBlessedError, PushConflict, history, push, rollback
from unisup.schemas import DataValidationError

pytestmark = pytest.mark.gcs


class EmulatorFaults:
    """Requests to fail with 503, by HTTP method and a path substring, a given number of times."""

    def __init__(self):
        self.lock = threading.Lock()
        self.plan: list[list] = []
        self.injected = 0
        self.preconditions_failed = 0

    def fail(self, method: str, path_part: str, times: int) -> None:
        with self.lock:
            self.plan.append([method, path_part, times])

    def take(self, method: str, path: str) -> bool:
        with self.lock:
            for entry in self.plan:
                if entry[0] == method and entry[1] in path and entry[2] > 0:
                    entry[2] -= 1
                    self.injected += 1
                    return True
        return False


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    """The emulator (with GCS's generation preconditions, see pipelines/local_gcs.py) whose
    handlers can fail chosen requests with 503 and count the 412s they answer."""
    from gcp_storage_emulator import server as emulator

    faults = EmulatorFaults()

    def wrap(method, handler):
        def handle(request, response, store):
            if faults.take(method, request.path):
                _ = request.data  # drain the body before answering
                response.status = HTTPStatus.SERVICE_UNAVAILABLE
                response.json({"error": {"code": 503, "message": "injected transient failure"}})
                return None
            outcome = handler(request, response, store)
            if response.status == HTTPStatus.PRECONDITION_FAILED:
                faults.preconditions_failed += 1
            return outcome

        return handle

    patched = tuple((regex, {m: wrap(m, h) for m, h in handlers.items()}) for regex, handlers in emulator.HANDLERS)
    monkeypatch.setattr(emulator, "HANDLERS", patched)
    return gcs_emulator, faults


@pytest.fixture(scope="module")
def artifacts(tiny_encoder_path, tmp_path_factory):
    """A tiny bi-encoder folder, an index folder and blessed / unblessed blessing files."""
    import numpy as np

    from unisup.biencoder.tower import Tower, save_biencoder
    from unisup.index import build_faiss_index, write_index

    root = tmp_path_factory.mktemp("promotion")
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=16)
    model = save_biencoder(tower, tower, root / "model")
    index, _ = build_faiss_index(np.eye(4, dtype=np.float32), "Flat", "inner_product", 10, use_gpu=False)
    write_index(index, ["a", "b", "c", "d"], {"factory": "Flat", "search_params": ""}, str(root / "index"))
    (root / "blessed.json").write_text(
        json.dumps({"blessed": True, "reasons": ["ndcg@10 up"], "gates": {}, "evidence": {"n": 3}})
    )
    (root / "unblessed.json").write_text(json.dumps({"blessed": False, "reasons": ["ndcg@10 delta CI below 0"]}))
    return {
        "model": str(model),
        "index": str(root / "index"),
        "blessed": str(root / "blessed.json"),
        "unblessed": str(root / "unblessed.json"),
    }


def _cfg(bucket, prefix, *extra):
    return load_config(
        "local",
        [
            f"promotion.model_repository=gs://{bucket}/{prefix}/triton",
            f"promotion.index_root=gs://{bucket}/{prefix}/indexes",
            f"promotion.config_root=gs://{bucket}/{prefix}/config",
            "promotion.control_model_uri=gs://prod/models/query_encoder/1",
            "promotion.control_index_uri=gs://prod/indexes/1",
            *extra,
        ],
    )


def test_push_promotes_model_and_index_and_writes_the_first_config(gcs, artifacts):
    bucket, _ = gcs
    cfg = _cfg(bucket, "layout")
    result = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)

    repo = f"gs://{bucket}/layout/triton/query_encoder"
    files = [u[len(repo) + 1 :] for u in storage.list_prefix(repo + "/")]
    assert "config.pbtxt" in files and "1/model.py" in files and "1/promotion.json" in files
    assert {"1/query_tower/config.json", "1/query_tower/tower.json", "1/query_tower/model.safetensors"} <= set(files)
    pbtxt = storage.read_text(f"{repo}/config.pbtxt")
    assert 'name: "query_encoder"' in pbtxt and 'backend: "python"' in pbtxt
    assert "dims: [ 32 ]" in pbtxt and "version_policy: { latest: { num_versions: 2 } }" in pbtxt
    index_files = storage.list_prefix(f"gs://{bucket}/layout/indexes/query_encoder/1/")
    assert sorted(u.rsplit("/", 1)[1] for u in index_files) == ["ids.parquet", "index.faiss", "index.json"]

    assert (result.version, result.model_version) == (1, 1)
    config_uri = f"gs://{bucket}/layout/config/experiments/unisup-retrieval/v0001.json"
    assert result.config_uri == config_uri
    config = json.loads(storage.read_text(config_uri))
    assert config["treatment_model_uri"] == f"{repo}/1"
    assert config["treatment_index_uri"] == f"gs://{bucket}/layout/indexes/query_encoder/1"
    assert config["control_model_uri"] == "gs://prod/models/query_encoder/1"
    assert config["treatment_traffic"] == 0.1 and config["previous_version"] is None
    assert json.loads(config["blessing"])["evidence"] == {"n": 3}
    current = json.loads(storage.read_text(f"gs://{bucket}/layout/config/experiments/unisup-retrieval/current.json"))
    assert current["version"] == 1 and current["config_uri"] == config_uri


def test_an_unblessed_candidate_is_refused_and_nothing_is_written(gcs, artifacts):
    bucket, _ = gcs
    with pytest.raises(NotBlessedError, match="not blessed.*ndcg@10 delta CI below 0"):
        push(artifacts["unblessed"], artifacts["model"], artifacts["index"], _cfg(bucket, "refused"))
    assert storage.list_prefix(f"gs://{bucket}/refused/") == []


def test_concurrent_pushes_give_ordered_versions_with_none_lost(gcs, artifacts):
    bucket, faults = gcs
    cfg = _cfg(bucket, "concurrent")
    n = 5
    barrier = threading.Barrier(n)

    def one_push(i):
        barrier.wait()
        return push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one_push, range(n)))
    print(f"{faults.preconditions_failed} conditional writes lost a race")
    assert sorted(r.version for r in results) == list(range(1, n + 1))
    assert sorted(r.model_version for r in results) == list(range(1, n + 1))
    versions = history(cfg)
    assert [v["version"] for v in versions] == list(range(1, n + 1))
    assert [v["previous_version"] for v in versions] == [None, 1, 2, 3, 4]
    assert len({v["push_id"] for v in versions}) == n
    assert sorted(v["treatment_model_uri"].rsplit("/", 1)[1] for v in versions) == [str(i) for i in range(1, n + 1)]
    current = json.loads(
        storage.read_text(f"gs://{bucket}/concurrent/config/experiments/unisup-retrieval/current.json")
    )
    assert current["version"] == n


def test_the_emulator_enforces_generation_preconditions(gcs):
    bucket, faults = gcs
    uri = f"gs://{bucket}/preconditions/object.json"
    generation = storage.write_text(uri, "first", if_generation_match=0)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_text(uri, "second", if_generation_match=0)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_text(uri, "second", if_generation_match=generation + 1)
    assert storage.write_text(uri, "third", if_generation_match=generation) != generation
    assert storage.read_text(uri) == "third" and faults.preconditions_failed == 2


def test_a_push_that_sees_stale_listings_moves_on_to_the_next_free_versions(gcs, artifacts, monkeypatch):
    bucket, faults = gcs
    cfg = _cfg(bucket, "stale")
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    from unisup import promotion

    monkeypatch.setattr(promotion, "_numbered_children", lambda store, prefix: [])
    second = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert second.model_version == 2 and second.version == 2
    assert faults.preconditions_failed == 1  # the claim of model version 1 was refused
    assert second.config["treatment_model_uri"].endswith("/query_encoder/2")


def test_a_push_that_keeps_losing_races_ends_in_a_clean_conflict(gcs, artifacts, monkeypatch):
    bucket, _ = gcs
    cfg = _cfg(bucket, "conflict", "promotion.max_attempts=3")
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    from unisup import promotion

    def stale_listing(store, root):  # the listing never shows v0001, so this push keeps picking a taken version
        return []

    monkeypatch.setattr(promotion, "_config_versions", stale_listing)
    with pytest.raises(PushConflict, match="lost 3 races for the next config version"):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    monkeypatch.undo()
    assert [v["version"] for v in history(cfg)] == [1]


def test_transient_503s_are_retried(gcs, artifacts):
    bucket, faults = gcs
    cfg = _cfg(bucket, "flaky")
    faults.fail("POST", "/upload/", 2)  # two uploads fail (model files, claim or config)
    faults.fail("GET", "/o", 2)  # two reads / listings fail
    result = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert faults.injected == 4
    assert result.version == 1
    assert json.loads(storage.read_text(result.config_uri))["version"] == 1


def test_rollback_restores_the_previous_config_as_a_new_version(gcs, artifacts):
    bucket, _ = gcs
    cfg = _cfg(bucket, "rollback")
    with pytest.raises(ValueError, match="no config to roll back"):
        rollback(cfg)
    first = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    with pytest.raises(ValueError, match="v0001 has no previous config"):
        rollback(cfg)
    second = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert second.config["treatment_model_uri"].endswith("/2")

    restored = rollback(cfg)
    assert restored.version == 3
    assert restored.config["treatment_model_uri"] == first.config["treatment_model_uri"]
    assert (restored.config["action"], restored.config["restored_version"], restored.config["rolled_back_version"]) == (
        "rollback",
        1,
        2,
    )
    current = json.loads(storage.read_text(f"gs://{bucket}/rollback/config/experiments/unisup-retrieval/current.json"))
    assert current["version"] == 3
    assert [v["version"] for v in history(cfg)] == [1, 2, 3]  # history kept
    with pytest.raises(ValueError, match="no previous config"):
        rollback(cfg)  # v0003 restored v0001, which had nothing before it


def test_first_push_needs_a_control_and_a_valid_traffic_share(gcs, artifacts):
    bucket, _ = gcs
    cfg = load_config("local", [f"promotion.config_root=gs://{bucket}/nocontrol/config"])
    with pytest.raises(ValueError, match="promotion.control_model_uri"):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    with pytest.raises(ValueError, match="treatment_traffic must be within 0..1"):
        push(
            artifacts["blessed"],
            artifacts["model"],
            artifacts["index"],
            _cfg(bucket, "traffic", "promotion.treatment_traffic=1.5"),
        )


def test_local_paths_work_the_same(tmp_path, artifacts):
    cfg = load_config(
        "local",
        [
            f"promotion.model_repository={tmp_path / 'triton'}",
            f"promotion.index_root={tmp_path / 'indexes'}",
            f"promotion.config_root={tmp_path / 'config'}",
            "promotion.control_model_uri=m0",
            "promotion.control_index_uri=i0",
        ],
    )
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    second = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert second.version == 2 and (tmp_path / "triton" / "query_encoder" / "2" / "query_tower" / "tower.json").exists()
    assert rollback(cfg).config["treatment_model_uri"].endswith("/1")


def test_a_config_that_breaks_the_schema_is_not_written(gcs, artifacts):
    bucket, _ = gcs
    cfg = _cfg(bucket, "schema", "promotion.experiment_id=' '")
    with pytest.raises(DataValidationError, match="experiment_id"):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert storage.list_prefix(f"gs://{bucket}/schema/config/") == []


def test_cli_push_refuses_unblessed_then_pushes_and_rolls_back(tmp_path, artifacts, capsys):
    from unisup.cli import main

    common = [
        f"-o=promotion.{k}={tmp_path / v}"
        for k, v in (("model_repository", "triton"), ("index_root", "indexes"), ("config_root", "config"))
    ]
    common += ["-o=promotion.control_model_uri=m0", "-o=promotion.control_index_uri=i0"]
    candidate = ["--model", artifacts["model"], "--index", artifacts["index"]]
    assert main(["push", "--blessing", artifacts["unblessed"], *candidate, *common]) == 2
    assert "not blessed" in capsys.readouterr().err
    assert main(["rollback", *common]) == 2
    for _ in range(2):
        assert main(["push", "--blessing", artifacts["blessed"], *candidate, *common]) == 0
    assert "v0002" in capsys.readouterr().out
    assert main(["rollback", *common]) == 0
    assert "v0003 restores v0001 (rolled back v0002)" in capsys.readouterr().out
