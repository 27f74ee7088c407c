"""Gated promotion of a blessed candidate and the versioned A/B experiment config.

``push`` refuses a candidate whose blessing is not ``blessed``. Otherwise it

1. claims the next version ``N`` of the query-encoder model in the serving Triton
   model repository by creating ``<repo>/<model>/<N>/promotion.json`` only if absent
   (generation precondition 0; a lost race moves on to ``N+1``), then copies the
   query tower to ``<N>/query_tower/`` with the python-backend ``model.py`` of
   ``unisup.biencoder.export`` and (re)writes ``<repo>/<model>/config.pbtxt`` with a
   version policy that serves the latest ``serve_versions`` versions;
2. copies the index folder to ``<index_root>/<model>/<N>/``;
3. writes the experiment config (the ``AB_CONFIG`` fields, JSON) as the next version
   ``<config_root>/experiments/<id>/v000V.json``, created only if absent, and moves
   ``<id>/current.json`` to it with ``if_generation_match`` on the pointer's
   generation. The pointer only moves forward: a push that finds a newer version
   already current leaves it. So N concurrent pushes give N ordered versions, none
   lost; a push that loses more than ``max_attempts`` races ends with
   :class:`PushConflict`, having written nothing the pointer refers to.

Every version file keeps the version it superseded (``previous_version``); ``rollback``
writes the config before the current one as a new version (history is never
rewritten), so rolling back twice walks two steps back. A unique ``push_id`` in every
claimed object tells a write of ours whose reply was lost from a concurrent one.
Transient storage errors (5xx, 429, dropped connections) are retried with tenacity
(``transient_attempts``), on top of the client's own retries.

Serving should load models explicitly (``--model-control-mode=explicit``) once the
config points at them: a version folder is claimed before its files are complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import tenacity

from unisup import storage
from unisup.config import Config, to_dict
from unisup.errors import UnisupError
from unisup.schemas import AB_CONFIG, validate

CLAIM_FILE = "promotion.json"
CURRENT_FILE = "current.json"
log = logging.getLogger(__name__)


class NotBlessedError(UnisupError, RuntimeError):
    """The candidate's blessing says it must not be pushed."""


class PushConflict(UnisupError, RuntimeError):
    """Concurrent pushes kept winning the race for a version or the current pointer."""


@dataclass
class PushResult:
    """Where a push (or rollback) put things."""

    experiment_id: str
    version: int
    config_uri: str
    config: dict
    model_version: int | None = None
    model_uri: str | None = None
    index_uri: str | None = None


# ---------------------------------------------------------------- transient errors


def is_transient(err: BaseException) -> bool:
    """A storage error worth retrying: HTTP 5xx / 429 or a dropped connection."""
    import requests
    from google.api_core import exceptions as gexc

    if isinstance(err, (gexc.ServerError, gexc.TooManyRequests, requests.ConnectionError, ConnectionError)):
        return True
    return False


def _retrying(attempts: int) -> tenacity.Retrying:
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, max=5.0),
        before_sleep=lambda state: log.warning("transient storage error, retrying: %s", state.outcome.exception()),
        reraise=True,
    )


class _Store:
    """The storage calls promotion makes, each retried on transient errors."""

    def __init__(self, attempts: int):
        self.retry = _retrying(attempts)

    def __getattr__(self, name: str):
        call = getattr(storage, name)
        return lambda *args, **kwargs: self.retry(call, *args, **kwargs)


# ---------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def read_blessing(uri: str) -> dict:
    """The blessing JSON at ``uri``, checked for its ``blessed`` flag."""
    try:
        blessing = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}: the blessing is not valid JSON: {err}") from None
    if not isinstance(blessing, dict) or not isinstance(blessing.get("blessed"), bool):
        raise ValueError(f"{uri}: the blessing lacks a boolean 'blessed'")
    return blessing


def _create_once(store: _Store, uri: str, payload: dict) -> bool:
    """Create ``uri`` with ``payload`` only if absent; True if it now holds our payload
    (also when our earlier attempt succeeded but its reply was lost)."""
    try:
        store.write_text(uri, json.dumps(payload, indent=1), if_generation_match=0)
        return True
    except storage.PreconditionFailed:
        existing = json.loads(store.read_text(uri))
        return existing.get("push_id") == payload["push_id"]


def _numbered_children(store: _Store, prefix: str) -> list[int]:
    prefix = prefix.rstrip("/") + "/"
    heads = {uri[len(prefix) :].split("/", 1)[0] for uri in store.list_prefix(prefix)}
    return sorted(int(h) for h in heads if h.isdigit())


def _config_versions(store: _Store, experiment_root: str) -> list[int]:
    prefix = experiment_root.rstrip("/") + "/"
    names = [uri[len(prefix) :] for uri in store.list_prefix(prefix)]
    return sorted(int(n[1:-5]) for n in names if n.startswith("v") and n.endswith(".json") and n[1:-5].isdigit())


def experiment_root(cfg: Config, experiment_id: str | None = None) -> str:
    return storage.join(cfg.promotion.config_root, "experiments", experiment_id or cfg.promotion.experiment_id)


def version_uri(root: str, version: int) -> str:
    return storage.join(root, f"v{version:04d}.json")


# ---------------------------------------------------------------- model and index


def _upload_tree(store: _Store, local_dir: Path, target: str) -> None:
    """Copy the files of a local folder under ``target``, leaving out the lock and
    generation files that local conditional writes keep beside their files."""
    for path in storage.list_prefix(str(local_dir)):
        store.upload_file(path, storage.join(target, str(Path(path).relative_to(local_dir))))


def _triton_config(cfg: Config, dim: int) -> str:
    from unisup.biencoder.export import model_config

    text = model_config(
        cfg.promotion.model_name,
        dim,
        cfg.training.triton_max_batch_size,
        cfg.training.triton_queue_delay_us,
        cfg.training.triton_instances,
    )
    return text + f"version_policy: {{ latest: {{ num_versions: {cfg.promotion.serve_versions} }} }}\n"


def promote_model(store: _Store, model_uri: str, cfg: Config, push_id: str) -> tuple[int, str]:
    """Copy the query tower into the next free version of the serving model; (version, its URI)."""
    from unisup.biencoder.export import MODEL_TEMPLATE, TOWER_FOLDER

    model_root = storage.join(cfg.promotion.model_repository, cfg.promotion.model_name)
    with storage.local_copy(model_uri) as local:
        manifest_path = Path(local) / "biencoder.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{model_uri}: not a bi-encoder folder (biencoder.json missing)")
        manifest = json.loads(manifest_path.read_text())
        version = (_numbered_children(store, model_root) or [0])[-1] + 1
        claim = {"push_id": push_id, "source_model_uri": model_uri, "claimed_at": _now()}
        for _ in range(cfg.promotion.max_attempts):
            if _create_once(store, storage.join(model_root, str(version), CLAIM_FILE), claim):
                break
            version += 1
        else:
            raise PushConflict(f"{model_root}: lost {cfg.promotion.max_attempts} races for a model version")
        target = storage.join(model_root, str(version))
        with tempfile.TemporaryDirectory(prefix="unisup-promote-") as tmp:
            staged = Path(tmp) / "version"
            shutil.copytree(Path(local) / manifest["query_tower"], staged / TOWER_FOLDER)
            shutil.copyfile(MODEL_TEMPLATE, staged / "model.py")
            _upload_tree(store, staged, target)
        store.write_text(storage.join(model_root, "config.pbtxt"), _triton_config(cfg, int(manifest["dim"])))
    return version, target


def promote_index(store: _Store, index_uri: str, cfg: Config, version: int) -> str:
    """Copy the index folder to ``<index_root>/<model>/<version>``; returns that URI."""
    target = storage.join(cfg.promotion.index_root, cfg.promotion.model_name, str(version))
    with storage.local_copy(index_uri) as local:
        if not (Path(local) / "index.json").exists():
            raise FileNotFoundError(f"{index_uri}: not an index folder (index.json missing)")
        _upload_tree(store, Path(local), target)
    return target


# ---------------------------------------------------------------- experiment config


def _validated(config: dict, source: str) -> dict:
    """Check the AB_CONFIG fields of ``config`` with the schema (raises DataValidationError)."""
    row = {c.name: config[c.name] for c in AB_CONFIG.columns}
    for column in ("created_at", "start_time"):
        row[column] = datetime.fromisoformat(row[column].replace("Z", "+00:00"))
    validate(pa.Table.from_pylist([row]), AB_CONFIG, source)
    return config


def _advance_current(store: _Store, root: str, version: int, attempts: int) -> None:
    """Point ``current.json`` at ``version`` unless a newer version is already current."""
    uri = storage.join(root, CURRENT_FILE)
    for _ in range(attempts):
        gen = store.generation(uri)
        if gen and json.loads(store.read_text(uri))["version"] >= version:
            return
        pointer = {"version": version, "config_uri": version_uri(root, version), "updated_at": _now()}
        try:
            store.write_text(uri, json.dumps(pointer, indent=1), if_generation_match=gen)
            return
        except storage.PreconditionFailed:
            continue
    raise PushConflict(f"{uri}: lost {attempts} races to move the current pointer to v{version:04d}")


def publish_config(store: _Store, root: str, build, attempts: int, push_id: str) -> tuple[int, dict]:
    """Write ``build(latest_config_or_None, version)`` as the next config version and move
    the current pointer; retried when a concurrent push takes the version first."""
    for _ in range(attempts):
        versions = _config_versions(store, root)
        latest = json.loads(store.read_text(version_uri(root, versions[-1]))) if versions else None
        version = versions[-1] + 1 if versions else 1
        config = _validated({**build(latest, version), "push_id": push_id}, version_uri(root, version))
        if _create_once(store, version_uri(root, version), config):
            _advance_current(store, root, version, attempts)
            return version, config
    raise PushConflict(f"{root}: lost {attempts} races for the next config version")


def push(blessing_uri: str, model_uri: str, index_uri: str, cfg: Config) -> PushResult:
    """Promote a blessed candidate (model and index) and publish the next experiment config."""
    p = cfg.promotion
    blessing = read_blessing(blessing_uri)
    if not blessing["blessed"]:
        reasons = "; ".join(blessing.get("reasons", [])) or "no reason given"
        raise NotBlessedError(f"{blessing_uri}: the candidate is not blessed, refusing to push it ({reasons})")
    if not 0.0 <= p.treatment_traffic <= 1.0:
        raise ValueError(f"promotion.treatment_traffic must be within 0..1, got {p.treatment_traffic}")
    store = _Store(p.transient_attempts)
    push_id = uuid.uuid4().hex
    root = experiment_root(cfg)
    current = _current_config(store, root)
    control_model = p.control_model_uri or (current or {}).get("control_model_uri", "")
    control_index = p.control_index_uri or (current or {}).get("control_index_uri", "")
    if not control_model or not control_index:
        raise ValueError(
            f"experiment {p.experiment_id}: no control to compare with; set promotion.control_model_uri and "
            "promotion.control_index_uri for its first push"
        )
    model_version, served_model = promote_model(store, model_uri, cfg, push_id)
    served_index = promote_index(store, index_uri, cfg, model_version)

    def build(latest: dict | None, version: int) -> dict:
        now = _now()
        return {
            "experiment_id": p.experiment_id,
            "version": version,
            "created_at": now,
            "control_model_uri": p.control_model_uri or (latest or {}).get("control_model_uri", control_model),
            "control_index_uri": p.control_index_uri or (latest or {}).get("control_index_uri", control_index),
            "treatment_model_uri": served_model,
            "treatment_index_uri": served_index,
            "treatment_traffic": p.treatment_traffic,
            "start_time": now,
            "blessing": json.dumps(blessing, sort_keys=True),
            "previous_version": latest["version"] if latest else None,
            "action": "push",
            "model_version": model_version,
            "source_model_uri": model_uri,
            "source_index_uri": index_uri,
            "promotion": to_dict(p),
        }

    version, config = publish_config(store, root, build, p.max_attempts, push_id)
    return PushResult(
        p.experiment_id, version, version_uri(root, version), config, model_version, served_model, served_index
    )


def _current_config(store: _Store, root: str) -> dict | None:
    uri = storage.join(root, CURRENT_FILE)
    if not store.generation(uri):
        return None
    pointer = json.loads(store.read_text(uri))
    return json.loads(store.read_text(pointer["config_uri"]))


def history(cfg: Config, experiment_id: str | None = None) -> list[dict]:
    """Every config version of the experiment, oldest first."""
    store = _Store(cfg.promotion.transient_attempts)
    root = experiment_root(cfg, experiment_id)
    return [json.loads(store.read_text(version_uri(root, v))) for v in _config_versions(store, root)]


def rollback(cfg: Config, experiment_id: str | None = None) -> PushResult:
    """Restore the config that preceded the current one, written as a new version."""
    store = _Store(cfg.promotion.transient_attempts)
    experiment = experiment_id or cfg.promotion.experiment_id
    root = experiment_root(cfg, experiment)
    push_id = uuid.uuid4().hex

    def build(latest: dict | None, version: int) -> dict:
        if latest is None:
            raise ValueError(f"experiment {experiment}: no config to roll back")
        if latest.get("previous_version") is None:
            raise ValueError(f"experiment {experiment}: v{latest['version']:04d} has no previous config to restore")
        restored = json.loads(store.read_text(version_uri(root, latest["previous_version"])))
        now = _now()
        return {
            **restored,
            "version": version,
            "created_at": now,
            "start_time": now,
            "action": "rollback",
            "restored_version": restored["version"],
            "rolled_back_version": latest["version"],
            "previous_version": restored.get("previous_version"),
        }

    version, config = publish_config(store, root, build, cfg.promotion.max_attempts, push_id)
    return PushResult(experiment, version, version_uri(root, version), config)
