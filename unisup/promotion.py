"""Gated promotion of a blessed candidate and the versioned A/B experiment config.

``push`` checks everything before its first write:

- ``promotion.experiment_id`` and ``promotion.model_name`` are plain names (letters, digits,
  ``.``, ``_``, ``-``, not starting with ``.``), so that no path leaves the configured roots,
  and ``promotion.treatment_traffic`` is a share;
- the blessing, which ``unisup evaluate`` binds to what it evaluated: it records the content
  digests (``storage.content_digest``) of the model, the index and the results JSON. The
  push recomputes the three and re-derives the gates from those results with its own
  ``evaluation`` settings (:func:`unisup.evaluation.blessing_of`), so a hand-written or
  edited blessing, another model or index, or edited results are refused
  (:class:`NotBlessedError`, :class:`~unisup.errors.ArtifactMismatch` naming what differs);
- the index was built by this model on the configured catalog (``data.catalog_uri``);
- the experiment has a control, and the A/B config to write passes the ``AB_CONFIG`` schema.

Then it

1. claims the next version ``N`` of the query-encoder model in the serving Triton model
   repository by creating ``<repo>/<model>/claims/<N>.json`` only if absent (generation
   precondition 0; a lost race moves on to ``N+1``);
2. copies the index folder to ``<index_root>/<model>/<N>/``;
3. publishes model version ``N``, the query tower (``query_tower/``) and the python-backend
   ``model.py`` of ``unisup.biencoder.export``, file by file, then rewrites
   ``<repo>/<model>/config.pbtxt`` with a ``specific`` version policy that lists ``N`` and
   the versions it already listed, the newest ``serve_versions`` of them. The folder ``<N>/``
   exists from its first file on (GCS has no atomic rename of a prefix), but Triton loads
   only the listed versions, and ``N`` is listed only once it is complete: the version
   becomes visible last, in one write. Concurrent pushes rewrite the config under a
   generation precondition, so none drops another's version;
4. writes the experiment config (the ``AB_CONFIG`` fields, JSON) as the next version
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
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import tenacity

from unisup import storage
from unisup.config import Config, ConfigError, to_dict
from unisup.errors import ArtifactMismatch, InputError, UnisupError
from unisup.schemas import AB_CONFIG, validate

CLAIMS_FOLDER = "claims"
MODEL_FILE = "model.py"
CURRENT_FILE = "current.json"
BOUND_ARTIFACTS = ("model", "index", "results")
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
log = logging.getLogger(__name__)


class NotBlessedError(UnisupError, RuntimeError):
    """The candidate's blessing says it must not be pushed, or cannot be trusted to say it may."""


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


# ---------------------------------------------------------------- checks


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_name(key: str, value: str) -> str:
    """``value`` if it is a plain name, which cannot lead out of the folder it names a child of;
    :class:`ConfigError` naming ``key`` otherwise."""
    if not PLAIN_NAME.fullmatch(value):
        raise ConfigError(
            f"{key} {value!r} is not a plain name: letters, digits, '.', '_' and '-', not starting with '.'"
        )
    return value


def read_blessing(uri: str) -> dict:
    """The blessing JSON at ``uri``, checked for its ``blessed`` flag."""
    if not storage.exists(uri):
        raise InputError(f"{uri}: no blessing file there")
    try:
        blessing = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as err:
        raise InputError(f"{uri}: the blessing is not valid JSON: {err}") from None
    if not isinstance(blessing, dict) or not isinstance(blessing.get("blessed"), bool):
        raise InputError(f"{uri}: the blessing lacks a boolean 'blessed'")
    return blessing


def _digest(uri: str, artifact: str) -> str:
    try:
        return storage.content_digest(uri)
    except FileNotFoundError:
        raise InputError(f"{uri}: the {artifact} is not there") from None


def verify_blessing(blessing_uri: str, model_uri: str, index_uri: str, cfg: Config) -> tuple[dict, dict[str, str]]:
    """The blessing at ``blessing_uri`` and the content digests of the model, the index and the
    results, once the blessing is checked to say blessed, to be bound to this model and index,
    and to be what the gates of ``cfg.evaluation`` give the results it was derived from."""
    from unisup.evaluation import blessing_of, read_results

    blessing = read_blessing(blessing_uri)
    if not blessing["blessed"]:
        reasons = "; ".join(blessing.get("reasons", [])) or "no reason given"
        raise NotBlessedError(f"{blessing_uri}: the candidate is not blessed, refusing to push it ({reasons})")
    evaluated = blessing.get("evaluated") or {}
    unbound = [a for a in BOUND_ARTIFACTS if not all((evaluated.get(a) or {}).get(key) for key in ("uri", "digest"))]
    if unbound:
        raise NotBlessedError(
            f"{blessing_uri}: the blessing records no content digest of the {', '.join(unbound)} it was "
            "derived from, refusing to push it; push the blessing that unisup evaluate wrote"
        )
    given = {"model": model_uri, "index": index_uri, "results": evaluated["results"]["uri"]}
    digests = {}
    for artifact, uri in given.items():
        digests[artifact] = _digest(uri, artifact)
        if digests[artifact] != evaluated[artifact]["digest"]:
            raise ArtifactMismatch(
                f"{blessing_uri}: {uri} is not the {artifact} that was evaluated: its digest is {digests[artifact]}, "
                f"that of the evaluated {artifact} ({evaluated[artifact]['uri']}) {evaluated[artifact]['digest']}"
            )
    rederived = blessing_of(read_results(given["results"]), cfg.evaluation)
    if not rederived["blessed"]:
        raise NotBlessedError(
            f"{blessing_uri}: the gates re-derived from {given['results']} with the configured evaluation "
            f"settings refuse the candidate ({'; '.join(rederived['reasons'])})"
        )
    return blessing, digests


def _create_once(store: _Store, uri: str, payload: dict) -> bool:
    """Create ``uri`` with ``payload`` only if absent; True if it now holds our payload
    (also when our earlier attempt succeeded but its reply was lost)."""
    try:
        store.write_text(uri, json.dumps(payload, indent=1), if_generation_match=0)
        return True
    except storage.PreconditionFailed:
        existing = json.loads(store.read_text(uri))
        return existing.get("push_id") == payload["push_id"]


def _config_versions(store: _Store, experiment_root: str) -> list[int]:
    prefix = experiment_root.rstrip("/") + "/"
    names = [uri[len(prefix) :] for uri in store.list_prefix(prefix)]
    return sorted(int(n[1:-5]) for n in names if n.startswith("v") and n.endswith(".json") and n[1:-5].isdigit())


def experiment_root(cfg: Config, experiment_id: str | None = None) -> str:
    experiment = check_name("promotion.experiment_id", experiment_id or cfg.promotion.experiment_id)
    return storage.join(cfg.promotion.config_root, "experiments", experiment)


def version_uri(root: str, version: int) -> str:
    return storage.join(root, f"v{version:04d}.json")


# ---------------------------------------------------------------- model and index


def _taken_versions(store: _Store, model_root: str) -> list[int]:
    """The versions of the serving model that are claimed or present (numeric sub-folders), sorted."""
    prefix = model_root.rstrip("/") + "/"
    taken = set()
    for uri in store.list_prefix(prefix):
        head, _, rest = uri[len(prefix) :].partition("/")
        if head.isdigit():
            taken.add(int(head))
        elif head == CLAIMS_FOLDER and rest.endswith(".json") and rest[:-5].isdigit():
            taken.add(int(rest[:-5]))
    return sorted(taken)


def claim_version(store: _Store, model_root: str, claim: dict, attempts: int) -> int:
    """Claim the next free version of the serving model (``claims/<N>.json``, created only if absent)."""
    version = (_taken_versions(store, model_root) or [0])[-1] + 1
    for _ in range(attempts):
        if _create_once(store, storage.join(model_root, CLAIMS_FOLDER, f"{version}.json"), claim):
            return version
        version += 1
    raise PushConflict(f"{model_root}: lost {attempts} races for a model version")


def _upload_tree(store: _Store, local_dir: Path, target: str, last: str | None = None) -> None:
    """Copy the files of a local folder under ``target`` (the file named ``last`` last), leaving
    out the lock and generation files that local conditional writes keep beside their files."""
    for path in sorted(storage.list_prefix(str(local_dir)), key=lambda p: Path(p).name == last):
        store.upload_file(path, storage.join(target, str(Path(path).relative_to(local_dir))))


SPECIFIC_POLICY = re.compile(r"^version_policy: \{ specific: \{ versions: \[([0-9, ]*)\] \} \}$", re.MULTILINE)


def served_versions(config_text: str) -> list[int]:
    """The versions a config.pbtxt written by :func:`triton_config` serves (none for another policy)."""
    found = SPECIFIC_POLICY.search(config_text)
    return [int(v) for v in found.group(1).split(",") if v.strip()] if found else []


def triton_config(cfg: Config, dim: int, versions: list[int]) -> str:
    """The serving config.pbtxt of the query encoder: Triton loads exactly ``versions``."""
    from unisup.biencoder.export import model_config

    text = model_config(
        cfg.promotion.model_name,
        dim,
        cfg.training.triton_max_batch_size,
        cfg.training.triton_queue_delay_us,
        cfg.training.triton_instances,
    )
    return text + f"version_policy: {{ specific: {{ versions: [{', '.join(map(str, versions))}] }} }}\n"


def serve_version(store: _Store, cfg: Config, model_root: str, dim: int, version: int) -> list[int]:
    """List the complete ``version`` in the serving config, keeping the newest ``serve_versions``
    of those listed; a concurrent rewrite (generation precondition) makes it read again."""
    uri = storage.join(model_root, "config.pbtxt")
    for _ in range(cfg.promotion.max_attempts):
        gen = store.generation(uri)
        listed = served_versions(store.read_text(uri)) if gen else []
        versions = sorted({*listed, version})[-cfg.promotion.serve_versions :]
        try:
            store.write_text(uri, triton_config(cfg, dim, versions), if_generation_match=gen)
            return versions
        except storage.PreconditionFailed:
            continue
    raise PushConflict(f"{uri}: lost {cfg.promotion.max_attempts} races to serve version {version}")


def _biencoder_manifest(local_model: Path, model_uri: str) -> dict:
    from unisup.biencoder.tower import MANIFEST

    if not (local_model / MANIFEST).exists():
        raise InputError(f"{model_uri}: not a bi-encoder folder ({MANIFEST} missing)")
    return json.loads((local_model / MANIFEST).read_text())


def publish_model_version(store: _Store, query_tower: Path, model_root: str, version: int) -> str:
    """Write the local ``query_tower`` folder and ``model.py`` as version ``version`` of the serving
    model, file by file (Triton does not load it before :func:`serve_version` lists it); returns its URI."""
    from unisup.biencoder.export import MODEL_TEMPLATE, TOWER_FOLDER

    target = storage.join(model_root, str(version))
    with tempfile.TemporaryDirectory(prefix="unisup-promote-") as tmp:
        shutil.copytree(query_tower, Path(tmp) / TOWER_FOLDER)
        shutil.copyfile(MODEL_TEMPLATE, Path(tmp) / MODEL_FILE)
        _upload_tree(store, Path(tmp), target, last=MODEL_FILE)
    return target


def served_index_uri(cfg: Config, version: int) -> str:
    return storage.join(cfg.promotion.index_root, cfg.promotion.model_name, str(version))


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
    """Promote a blessed candidate (model and index) and publish the next experiment config;
    everything is checked before anything is written."""
    from unisup.index import catalog_record, check_index_matches

    p = cfg.promotion
    check_name("promotion.model_name", p.model_name)
    root = experiment_root(cfg)
    if not 0.0 <= p.treatment_traffic <= 1.0:
        raise ConfigError(f"promotion.treatment_traffic must be within 0..1, got {p.treatment_traffic}")
    store = _Store(p.transient_attempts)
    current = _current_config(store, root)
    control_model = p.control_model_uri or (current or {}).get("control_model_uri", "")
    control_index = p.control_index_uri or (current or {}).get("control_index_uri", "")
    if not control_model or not control_index:
        raise ConfigError(
            f"experiment {p.experiment_id}: no control to compare with; set promotion.control_model_uri and "
            "promotion.control_index_uri for its first push"
        )
    blessing, digests = verify_blessing(blessing_uri, model_uri, index_uri, cfg)
    check_index_matches(index_uri, model_uri, digests["model"], catalog_record(cfg.data.catalog_uri))
    push_id = uuid.uuid4().hex
    model_root = storage.join(p.model_repository, p.model_name)

    def build(latest: dict | None, version: int, model_version: int) -> dict:
        now = _now()
        return {
            "experiment_id": p.experiment_id,
            "version": version,
            "created_at": now,
            "control_model_uri": p.control_model_uri or (latest or {}).get("control_model_uri", control_model),
            "control_index_uri": p.control_index_uri or (latest or {}).get("control_index_uri", control_index),
            "treatment_model_uri": storage.join(model_root, str(model_version)),
            "treatment_index_uri": served_index_uri(cfg, model_version),
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

    with storage.local_copy(model_uri) as local_model:
        manifest = _biencoder_manifest(Path(local_model), model_uri)
        _validated(build(current, (current or {}).get("version", 0) + 1, 0), f"the next config of {root}")
        claim = {
            "push_id": push_id,
            "source_model_uri": model_uri,
            "model_digest": digests["model"],
            "claimed_at": _now(),
        }
        model_version = claim_version(store, model_root, claim, p.max_attempts)
        with storage.local_copy(index_uri) as local_index:
            _upload_tree(store, Path(local_index), served_index_uri(cfg, model_version))
        tower = Path(local_model) / manifest["query_tower"]
        served_model = publish_model_version(store, tower, model_root, model_version)
    serve_version(store, cfg, model_root, int(manifest["dim"]), model_version)
    version, config = publish_config(
        store, root, lambda latest, v: build(latest, v, model_version), p.max_attempts, push_id
    )
    return PushResult(
        p.experiment_id,
        version,
        version_uri(root, version),
        config,
        model_version,
        served_model,
        served_index_uri(cfg, model_version),
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
            raise InputError(f"experiment {experiment}: no config to roll back")
        if latest.get("previous_version") is None:
            raise InputError(f"experiment {experiment}: v{latest['version']:04d} has no previous config to restore")
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
