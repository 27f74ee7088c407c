"""Promotion and the versioned A/B config: against gcp-storage-emulator with the real client
(marker ``gcs``), and on local paths the checks that come before any write (the blessing bound
to what was evaluated, the index to its model and catalog, plain names) and the order of the
writes that Triton sees."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import pytest

from unisup import storage
from unisup.config import ConfigError, load_config
from unisup.errors import ArtifactMismatch, InputError
from unisup.promotion import NotBlessedError, PushConflict, history, push, rollback, served_versions


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
def artifacts(tiny_encoder_path, tiny_overrides, tmp_path_factory):
    """A tiny bi-encoder, its index of the tiny catalog, and two evaluations of it by
    ``unisup.evaluation`` (results and bound blessing): blessed against itself, refused
    against itself and BM25, which the random tiny model loses to."""
    from unisup.biencoder.tower import Tower, save_biencoder
    from unisup.evaluation import output_uris, run_evaluation
    from unisup.index import build_catalog_index

    root = tmp_path_factory.mktemp("promotion")
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=16)
    model = str(save_biencoder(tower, tower, root / "model"))
    settings = [f"index.work_dir={root / 'shards'}", "index.factory=Flat", "index.search_params=''"]
    cfg = load_config("local", tiny_overrides + settings + ["evaluation.n_bootstrap=50"])
    index = str(root / "index")
    build_catalog_index(model, index, cfg, progress=False)
    outputs = {}
    for name, channels in (("blessed", []), ("unblessed", ["bm25"])):
        evaluation = dataclasses.replace(cfg.evaluation, baseline_channels=channels)
        run_evaluation(
            dataclasses.replace(cfg, evaluation=evaluation), model, index, str(root / name), [("same", model, index)]
        )
        outputs[name] = output_uris(str(root / name))["blessing"]
        outputs[f"{name}_results"] = output_uris(str(root / name))["json"]
    return {"model": model, "index": index, "overrides": tiny_overrides, "root": root, **outputs}


def bound_blessing(path: Path, model: str, index: str, results: str) -> str:
    """A blessing written by hand that records the true digests of ``model``, ``index`` and ``results``."""
    evaluated = {
        name: {"uri": uri, "digest": storage.content_digest(uri)}
        for name, uri in (("model", model), ("index", index), ("results", results))
    }
    path.write_text(json.dumps({"blessed": True, "reasons": ["hand-made"], "gates": {}, "evaluated": evaluated}))
    return str(path)


def _cfg(artifacts, bucket, prefix, *extra):
    return load_config(
        "local",
        [
            *artifacts["overrides"],
            f"promotion.model_repository=gs://{bucket}/{prefix}/triton",
            f"promotion.index_root=gs://{bucket}/{prefix}/indexes",
            f"promotion.config_root=gs://{bucket}/{prefix}/config",
            "promotion.control_model_uri=gs://prod/models/query_encoder/1",
            "promotion.control_index_uri=gs://prod/indexes/1",
            *extra,
        ],
    )


def _local_cfg(artifacts, serving: Path, *extra):
    return load_config(
        "local",
        [
            *artifacts["overrides"],
            f"promotion.model_repository={serving / 'triton'}",
            f"promotion.index_root={serving / 'indexes'}",
            f"promotion.config_root={serving / 'config'}",
            "promotion.control_model_uri=m0",
            "promotion.control_index_uri=i0",
            *extra,
        ],
    )


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------- on the GCS emulator


@pytest.mark.gcs
def test_push_promotes_model_and_index_and_writes_the_first_config(gcs, artifacts):
    bucket, _ = gcs
    cfg = _cfg(artifacts, bucket, "layout")
    result = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)

    repo = f"gs://{bucket}/layout/triton/query_encoder"
    files = [u[len(repo) + 1 :] for u in storage.list_prefix(repo + "/")]
    assert "config.pbtxt" in files and "1/model.py" in files and "claims/1.json" in files
    assert {"1/query_tower/config.json", "1/query_tower/tower.json", "1/query_tower/model.safetensors"} <= set(files)
    assert [f for f in files if f.startswith("1/") and not f.startswith("1/query_tower/")] == ["1/model.py"]
    pbtxt = storage.read_text(f"{repo}/config.pbtxt")
    assert 'name: "query_encoder"' in pbtxt and 'backend: "python"' in pbtxt
    assert "dims: [ 32 ]" in pbtxt and served_versions(pbtxt) == [1]
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
    blessing = json.loads(config["blessing"])
    assert blessing["evidence"]["queries"]["human"] == 3
    assert blessing["evaluated"]["model"]["digest"] == storage.content_digest(artifacts["model"])
    current = json.loads(storage.read_text(f"gs://{bucket}/layout/config/experiments/unisup-retrieval/current.json"))
    assert current["version"] == 1 and current["config_uri"] == config_uri


@pytest.mark.gcs
def test_on_gcs_the_version_files_are_uploaded_with_model_py_last(gcs, artifacts, monkeypatch):
    bucket, _ = gcs
    uploads = []
    upload = storage.upload_file

    def recorded(local_path, uri):
        upload(local_path, uri)
        uploads.append(uri)

    monkeypatch.setattr(storage, "upload_file", recorded)
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], _cfg(artifacts, bucket, "order"))
    version_files = [u for u in uploads if "/triton/query_encoder/1/" in u]
    assert len(version_files) > 3 and version_files[-1].endswith("/1/model.py") and uploads[-1] == version_files[-1]
    repo = f"gs://{bucket}/order/triton/query_encoder"
    assert served_versions(storage.read_text(f"{repo}/config.pbtxt")) == [1]


@pytest.mark.gcs
def test_a_blessing_accepts_gcs_copies_of_what_was_evaluated_and_refuses_an_altered_copy(gcs, artifacts, tmp_path):
    bucket, _ = gcs
    model, index = f"gs://{bucket}/copies/model", f"gs://{bucket}/copies/index"
    storage.upload_dir(artifacts["model"], model)
    storage.upload_dir(artifacts["index"], index)
    assert push(artifacts["blessed"], model, index, _cfg(artifacts, bucket, "copies-ok")).model_version == 1

    altered = tmp_path / "index.json"
    altered.write_text(storage.read_text(f"{index}/index.json").replace('"factory"', '"factory" ', 1))
    storage.upload_file(altered, f"{index}/index.json")
    with pytest.raises(ArtifactMismatch, match=f"{index} is not the index that was evaluated"):
        push(artifacts["blessed"], model, index, _cfg(artifacts, bucket, "copies-refused"))
    assert storage.list_prefix(f"gs://{bucket}/copies-refused/") == []


@pytest.mark.gcs
def test_an_unblessed_candidate_is_refused_and_nothing_is_written(gcs, artifacts):
    bucket, _ = gcs
    with pytest.raises(NotBlessedError, match="not blessed.*ndcg@10 delta vs bm25"):
        push(artifacts["unblessed"], artifacts["model"], artifacts["index"], _cfg(artifacts, bucket, "refused"))
    assert storage.list_prefix(f"gs://{bucket}/refused/") == []


@pytest.mark.gcs
def test_concurrent_pushes_give_ordered_versions_with_none_lost(gcs, artifacts):
    bucket, faults = gcs
    cfg = _cfg(artifacts, bucket, "concurrent")
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


@pytest.mark.gcs
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


@pytest.mark.gcs
def test_a_push_that_sees_stale_listings_moves_on_to_the_next_free_versions(gcs, artifacts, monkeypatch):
    bucket, faults = gcs
    cfg = _cfg(artifacts, bucket, "stale")
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    from unisup import promotion

    monkeypatch.setattr(promotion, "_taken_versions", lambda store, prefix: [])
    second = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert second.model_version == 2 and second.version == 2
    assert faults.preconditions_failed == 1  # the claim of model version 1 was refused
    assert second.config["treatment_model_uri"].endswith("/query_encoder/2")


@pytest.mark.gcs
def test_a_push_that_keeps_losing_races_ends_in_a_clean_conflict(gcs, artifacts, monkeypatch):
    bucket, _ = gcs
    cfg = _cfg(artifacts, bucket, "conflict", "promotion.max_attempts=3")
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    from unisup import promotion

    def stale_listing(store, root):  # the listing never shows v0001, so this push keeps picking a taken version
        return []

    monkeypatch.setattr(promotion, "_config_versions", stale_listing)
    with pytest.raises(PushConflict, match="lost 3 races for the next config version"):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    monkeypatch.undo()
    assert [v["version"] for v in history(cfg)] == [1]


@pytest.mark.gcs
def test_transient_503s_are_retried(gcs, artifacts):
    bucket, faults = gcs
    cfg = _cfg(artifacts, bucket, "flaky")
    faults.fail("POST", "/upload/", 2)  # two uploads fail (model files, claim or config)
    faults.fail("GET", "/o", 2)  # two reads / listings fail
    result = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert faults.injected == 4
    assert result.version == 1
    assert json.loads(storage.read_text(result.config_uri))["version"] == 1


@pytest.mark.gcs
def test_rollback_restores_the_previous_config_as_a_new_version(gcs, artifacts):
    bucket, _ = gcs
    cfg = _cfg(artifacts, bucket, "rollback")
    with pytest.raises(InputError, match="no config to roll back"):
        rollback(cfg)
    first = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    with pytest.raises(InputError, match="v0001 has no previous config"):
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
    with pytest.raises(InputError, match="no previous config"):
        rollback(cfg)  # v0003 restored v0001, which had nothing before it


@pytest.mark.gcs
def test_first_push_needs_a_control_and_a_valid_traffic_share(gcs, artifacts):
    bucket, _ = gcs
    cfg = _cfg(artifacts, bucket, "nocontrol", "promotion.control_model_uri=''")
    with pytest.raises(ConfigError, match="promotion.control_model_uri"):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    with pytest.raises(ConfigError, match="treatment_traffic must be within 0..1"):
        push(
            artifacts["blessed"],
            artifacts["model"],
            artifacts["index"],
            _cfg(artifacts, bucket, "traffic", "promotion.treatment_traffic=1.5"),
        )
    assert storage.list_prefix(f"gs://{bucket}/nocontrol/") == storage.list_prefix(f"gs://{bucket}/traffic/") == []


# ---------------------------------------------------------------- local paths


def test_local_paths_work_the_same(tmp_path, artifacts):
    cfg = _local_cfg(artifacts, tmp_path)
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    second = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert second.version == 2 and (tmp_path / "triton" / "query_encoder" / "2" / "query_tower" / "tower.json").exists()
    assert rollback(cfg).config["treatment_model_uri"].endswith("/1")
    assert sorted(p.name for p in (tmp_path / "triton" / "query_encoder").iterdir() if p.name[0] != ".") == [
        "1",
        "2",
        "claims",
        "config.pbtxt",
    ]


def test_a_hand_written_blessing_is_refused_and_nothing_is_written(tmp_path, artifacts):
    blessing = tmp_path / "blessing.json"
    blessing.write_text(json.dumps({"blessed": True}))
    with pytest.raises(NotBlessedError, match="records no content digest of the model, index, results"):
        push(str(blessing), artifacts["model"], artifacts["index"], _local_cfg(artifacts, tmp_path / "serving"))
    assert _files(tmp_path / "serving") == []


def test_a_failing_blessing_edited_to_true_is_refused_by_the_re_derived_gates(tmp_path, artifacts):
    edited = json.loads(Path(artifacts["unblessed"]).read_text())
    edited.update(blessed=True, reasons=["all gates passed"])
    (tmp_path / "blessing.json").write_text(json.dumps(edited))
    with pytest.raises(NotBlessedError, match="gates re-derived from .* refuse the candidate .*ndcg@10 delta vs bm25"):
        push(
            str(tmp_path / "blessing.json"),
            artifacts["model"],
            artifacts["index"],
            _local_cfg(artifacts, tmp_path / "s"),
        )
    assert _files(tmp_path / "s") == []


def test_the_push_re_derives_the_gates_with_its_own_gate_settings(tmp_path, artifacts):
    cfg = _local_cfg(artifacts, tmp_path / "serving", "evaluation.gate_min_queries=4")
    with pytest.raises(NotBlessedError, match="3 judged queries < the 4 required"):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert _files(tmp_path / "serving") == []


def test_edited_results_are_refused(tmp_path, artifacts):
    results = tmp_path / "results.json"
    payload = json.loads(Path(artifacts["unblessed_results"]).read_text())
    for row in payload["results"]:  # the candidate no worse than BM25
        if row["baseline"] == "bm25":
            row.update(delta=0.0, ci_low=0.0, ci_high=0.0)
    results.write_text(json.dumps(payload))
    blessing = json.loads(Path(artifacts["unblessed"]).read_text())
    blessing["blessed"] = True
    blessing["evaluated"]["results"]["uri"] = str(results)
    (tmp_path / "blessing.json").write_text(json.dumps(blessing))
    recorded = blessing["evaluated"]["results"]["digest"]
    with pytest.raises(ArtifactMismatch, match=f"{results} is not the results that was evaluated") as err:
        push(
            str(tmp_path / "blessing.json"),
            artifacts["model"],
            artifacts["index"],
            _local_cfg(artifacts, tmp_path / "s"),
        )
    assert recorded in str(err.value) and storage.content_digest(str(results)) in str(err.value)
    assert _files(tmp_path / "s") == []


def test_another_model_than_the_evaluated_one_is_refused(tmp_path, artifacts, tiny_encoder_path):
    from unisup.biencoder.tower import Tower, save_biencoder

    tower = Tower.from_pretrained(tiny_encoder_path, max_length=12)
    other = str(save_biencoder(tower, tower, tmp_path / "other-model"))
    with pytest.raises(ArtifactMismatch, match=f"{other} is not the model that was evaluated") as err:
        push(artifacts["blessed"], other, artifacts["index"], _local_cfg(artifacts, tmp_path / "serving"))
    assert storage.content_digest(other) in str(err.value)
    assert storage.content_digest(artifacts["model"]) in str(err.value)
    assert _files(tmp_path / "serving") == []


def test_an_index_of_another_model_is_refused_before_any_version_is_claimed(tmp_path, artifacts, tiny_encoder_path):
    """Even under a blessing with the right digests (made by hand), the index must belong to the model."""
    import numpy as np

    from unisup.index import build_faiss_index, write_index

    index, _ = build_faiss_index(np.eye(32, dtype=np.float32)[:4], "Flat", "inner_product", 10, use_gpu=False)
    foreign = str(tmp_path / "foreign-index")
    write_index(index, ["a", "b", "c", "d"], {"factory": "Flat", "model_fingerprint": "f" * 64}, foreign)
    blessing = bound_blessing(tmp_path / "b.json", artifacts["model"], foreign, artifacts["blessed_results"])
    with pytest.raises(ArtifactMismatch, match=f"{foreign}: the index was built by the model with digest f{{64}}"):
        push(blessing, artifacts["model"], foreign, _local_cfg(artifacts, tmp_path / "serving"))
    assert _files(tmp_path / "serving") == []

    shutil.copytree(artifacts["index"], tmp_path / "broken-index")
    (tmp_path / "broken-index" / "index.json").unlink()
    broken = str(tmp_path / "broken-index")
    blessing = bound_blessing(tmp_path / "c.json", artifacts["model"], broken, artifacts["blessed_results"])
    with pytest.raises(InputError, match="not an index folder"):
        push(blessing, artifacts["model"], broken, _local_cfg(artifacts, tmp_path / "serving"))
    assert _files(tmp_path / "serving") == []  # no orphan model version for Triton to serve


def test_an_index_of_another_catalog_is_refused(tmp_path, artifacts, tiny_sample):
    import pyarrow.parquet as pq

    other = tmp_path / "other-products.parquet"
    pq.write_table(pq.read_table(tiny_sample["catalog"]).slice(1), other)
    cfg = _local_cfg(artifacts, tmp_path / "serving", f"data.catalog_uri={other}")
    with pytest.raises(ArtifactMismatch) as err:
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    for catalog in (tiny_sample["catalog"], other):
        assert str(catalog) in str(err.value) and storage.content_digest(str(catalog)) in str(err.value)
    assert _files(tmp_path / "serving") == []


@pytest.mark.parametrize("key", ["experiment_id", "model_name"])
@pytest.mark.parametrize("name", ["../../..", "a/b", "a\\\\b", "a\\x00b", ".hidden", "..", ""])
def test_names_that_could_leave_the_roots_are_refused_before_any_write(tmp_path, artifacts, key, name):
    cfg = _local_cfg(artifacts, tmp_path / "deep" / "down" / "serving")
    cfg = dataclasses.replace(cfg, promotion=dataclasses.replace(cfg.promotion, **{key: name}))
    with pytest.raises(ConfigError, match=f"promotion.{key} .* is not a plain name"):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert _files(tmp_path) == []
    if key == "experiment_id":
        with pytest.raises(ConfigError, match="promotion.experiment_id"):
            rollback(cfg)
        with pytest.raises(ConfigError, match="promotion.experiment_id"):
            history(cfg, name)


def test_ordinary_names_are_accepted(tmp_path, artifacts):
    cfg = _local_cfg(artifacts, tmp_path, "promotion.experiment_id=Exp-2.v_1", "promotion.model_name=q_enc-2.0")
    result = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert result.config_uri == str(tmp_path / "config" / "experiments" / "Exp-2.v_1" / "v0001.json")
    assert (tmp_path / "triton" / "q_enc-2.0" / "1" / "model.py").exists()


def test_a_version_is_served_only_once_complete_at_every_point_of_three_pushes(tmp_path, artifacts, monkeypatch):
    """Triton loads the versions config.pbtxt lists: after every file written by three pushes,
    each listed version holds the whole version, and the newest two are listed at the end."""
    tower = Path(artifacts["model"]) / "query_tower"
    complete = sorted(["model.py"] + [f"query_tower/{name}" for name in _files(tower)])
    repo = tmp_path / "triton" / "query_encoder"
    observed = []

    def check():
        config = repo / "config.pbtxt"
        listed = served_versions(config.read_text()) if config.exists() else []
        for version in listed:
            assert _files(repo / str(version)) == complete, f"version {version} is served but incomplete"
        observed.append(tuple(listed))

    upload = storage.upload_file

    def checked(*args, **kwargs):
        out = upload(*args, **kwargs)
        check()
        return out

    monkeypatch.setattr(storage, "upload_file", checked)
    write = storage.write_text
    monkeypatch.setattr(storage, "write_text", lambda *a, **k: (write(*a, **k), check())[0])
    cfg = _local_cfg(artifacts, tmp_path)
    for _ in range(3):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    monkeypatch.undo()
    assert len(observed) > 3 * len(complete)  # every file of the three versions was written under observation
    assert [v for i, v in enumerate(observed) if i == 0 or v != observed[i - 1]] == [(), (1,), (1, 2), (2, 3)]


def test_a_push_that_died_mid_upload_is_never_served(tmp_path, artifacts, monkeypatch):
    cfg = _local_cfg(artifacts, tmp_path)
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    upload, calls = storage.upload_file, []

    def dies_on_the_third_model_file(local_path, uri):
        if "/triton/" in str(uri):
            calls.append(uri)
            if len(calls) == 3:
                raise KeyboardInterrupt("the pod was evicted")
        return upload(local_path, uri)

    monkeypatch.setattr(storage, "upload_file", dies_on_the_third_model_file)
    with pytest.raises(KeyboardInterrupt):
        push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    monkeypatch.undo()
    repo = tmp_path / "triton" / "query_encoder"
    assert (repo / "2").exists() and served_versions((repo / "config.pbtxt").read_text()) == [1]
    third = push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    assert third.model_version == 3 and served_versions((repo / "config.pbtxt").read_text()) == [1, 3]


@pytest.mark.gcs
def test_concurrent_pushes_each_get_their_version_served(gcs, artifacts):
    bucket, _ = gcs
    cfg = _cfg(artifacts, bucket, "served", "promotion.serve_versions=4")
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg), range(4))
        )
    config = storage.read_text(f"gs://{bucket}/served/triton/query_encoder/config.pbtxt")
    assert served_versions(config) == sorted(r.model_version for r in results) == [1, 2, 3, 4]


def test_cli_push_refuses_unblessed_then_pushes_and_rolls_back(tmp_path, artifacts, capsys):
    from unisup.cli import main

    common = [f"-o={o}" for o in artifacts["overrides"]]
    common += [
        f"-o=promotion.{k}={tmp_path / v}"
        for k, v in (("model_repository", "triton"), ("index_root", "indexes"), ("config_root", "config"))
    ]
    common += ["-o=promotion.control_model_uri=m0", "-o=promotion.control_index_uri=i0"]
    candidate = ["--model", artifacts["model"], "--index", artifacts["index"]]
    assert main(["push", "--blessing", artifacts["unblessed"], *candidate, *common]) == 2
    assert "unisup: error:" in capsys.readouterr().err and not (tmp_path / "triton").exists()
    assert main(["rollback", *common]) == 2
    assert "no config to roll back" in capsys.readouterr().err
    for _ in range(2):
        assert main(["push", "--blessing", artifacts["blessed"], *candidate, *common]) == 0
    assert "v0002" in capsys.readouterr().out
    assert main(["rollback", *common]) == 0
    assert "v0003 restores v0001 (rolled back v0002)" in capsys.readouterr().out


def _loading(server) -> bool:
    log = server.log_tail(10_000)
    return log.count('"loading: ') > log.count("successfully loaded") + log.count("failed to load")


def _repository_index(server) -> list[dict]:
    import urllib.request

    request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.triton
def test_a_polling_tritonserver_never_sees_a_version_before_it_is_complete(
    tmp_path, artifacts, monkeypatch, tritonserver_available
):
    """The serving deployment's mode (poll) on a real tritonserver: while a push writes version 2
    file by file, held before its last file until Triton has rescanned the model folder, every
    repository index shows version 1 ready and no failed version, and version 2 is served, and
    answers, once the push has listed it."""
    import time

    import numpy as np
    import tritonclient.http as httpclient

    from unisup import promotion
    from unisup.serving.triton_server import current_environment, triton_server

    environment = current_environment()
    config = promotion.triton_config
    if environment:  # this machine's stub runs in this virtual environment, as serving_view arranges
        parameter = f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{environment}" }} }}\n'
        monkeypatch.setattr(promotion, "triton_config", lambda *args: config(*args) + parameter)
    cfg = _local_cfg(artifacts, tmp_path)
    push(artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
    repo = tmp_path / "triton"
    upload = storage.upload_file

    with triton_server(repo, poll_secs=1) as server:

        def scans_seen() -> int:
            return server.log_tail(10_000).count("fails to convert to integral number")  # one per scan of versions

        before_version_2 = []

        def after_a_scan(local_path, uri):
            """Before the version's last file, wait until Triton has rescanned the model folder (which
            changed when the version's folder appeared) and loaded what it found."""
            if "/query_encoder/2/" in str(uri) and not before_version_2:
                before_version_2.append(scans_seen())
            if str(uri).endswith("/2/model.py"):
                deadline = time.monotonic() + 120
                while scans_seen() == before_version_2[0] and time.monotonic() < deadline:
                    time.sleep(0.2)
                while _loading(server) and time.monotonic() < deadline:
                    time.sleep(0.2)
            upload(local_path, uri)

        monkeypatch.setattr(storage, "upload_file", after_a_scan)
        with ThreadPoolExecutor(1) as pool:
            pushing = pool.submit(push, artifacts["blessed"], artifacts["model"], artifacts["index"], cfg)
            scans = []
            while not pushing.done():
                scans.append(_repository_index(server))
                time.sleep(0.3)
            pushing.result()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not server.model_ready("query_encoder/versions/2"):
            time.sleep(0.5)
        assert server.model_ready("query_encoder/versions/2"), server.log_tail()
        client = httpclient.InferenceServerClient(server.http_url)
        batch = np.array([[b"usb cable"]], dtype=np.object_)
        request = httpclient.InferInput("query", list(batch.shape), "BYTES")
        request.set_data_from_numpy(batch)
        served = client.infer("query_encoder", [request], model_version="2").as_numpy("embedding")
        assert scans_seen() > before_version_2[0] and "failed to load" not in server.log_tail(10_000)
    assert len(scans) > 5 and served.shape == (1, 32)
    for scan in scans:
        states = {entry.get("version"): entry.get("state") for entry in scan}
        assert states.get("1") == "READY", scan
        assert not [e for e in scan if e.get("state") not in ("READY", None) or e.get("reason")], scan
