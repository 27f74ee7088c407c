"""Label (query, item) pairs with the teacher cascade, in resumable shards.

Input pairs (Parquet or CSV with ``query`` and ``item_id`` (or ``product_id``)
columns) are checked: rows with a missing query or item, an item not in the
catalog, or a repeated pair are quarantined with a reason, so rows in = labeled +
quarantined. The unique pairs, sorted, are cut into shards of
``labeling.shard_size``. Each finished shard is written and then recorded in
``manifest.json``; a rerun with the same input and settings skips the recorded
shards, so after a crash (even of the Triton server) every pair is labeled exactly
once. The final ``labels.parquet`` (schema ``labels``) is the shards in order.

    <out>/labels.parquet  quarantine.parquet  report.json
    <work>/manifest.json  shards/part-00000.parquet ...
    (work = <labeling.work_uri>/<input fingerprint>, stable across retries; or <out>)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from unisup import storage
from unisup.config import Config, ConfigError, LabelingConfig, TeacherStageConfig
from unisup.data.dataset import load_catalog
from unisup.data.tables import parse_csv, read_table, write_table
from unisup.errors import InputError, ServingError
from unisup.schemas import (
    LABELS,
    QUARANTINE_REASON,
    SOURCE_ROW,
    DataValidationError,
    RuleContext,
    validate,
)
from unisup.teachers.backends import Backend, InProcessBackend, TritonBackend
from unisup.teachers.cascade import ESCALATION_FILE, EscalationRule, calibrated_rule, run_cascade
from unisup.teachers.stages import stage_item_texts

log = logging.getLogger(__name__)

PAIRS = "pairs"
MANIFEST = "manifest.json"
LABELS_FILE = "labels.parquet"
QUARANTINE_FILE = "quarantine.parquet"
REPORT_FILE = "report.json"


def cascade_stages(cfg: Config) -> list[TeacherStageConfig]:
    """The configured stages in cascade order (``labeling.stages``, default: all teachers)."""
    by_name = {s.name: s for s in cfg.teachers.stages}
    names = cfg.labeling.stages or list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"labeling.stages names unknown stage(s) {', '.join(unknown)}; teachers.stages has {', '.join(by_name)}"
        )
    return [by_name[n] for n in names]


def escalation_rule(cfg: Config, repository: str | None = None) -> EscalationRule:
    """The configured rule; ``calibrated``: the one train-teacher chose on validation, read from
    ``escalation.json`` in the teachers ``repository`` (default: teachers.repository_uri)."""
    lab = cfg.labeling
    if lab.escalate_rule != "calibrated":
        return EscalationRule(
            lab.escalate_rule, lab.max_prob_threshold, lab.boundary_margin, cfg.data.relevance_threshold
        )
    uri = storage.join(str(repository or cfg.teachers.repository_uri), ESCALATION_FILE)
    if not storage.exists(uri):
        raise ConfigError(
            f"labeling.escalate_rule=calibrated needs {uri}, which train-teacher writes when "
            "teachers.escalation_target_share > 0; or set labeling.escalate_rule to max_prob, boundary or either"
        )
    return calibrated_rule(json.loads(storage.read_text(uri)), cfg.data.relevance_threshold)


def triton_backend(lab: LabelingConfig, url: str) -> TritonBackend:
    """A backend on the Triton server at ``url`` with the labeling batch, concurrency, timeout and retry settings."""
    return TritonBackend(
        url, lab.batch_size, lab.concurrency, lab.timeout_s, lab.retries, lab.backoff_s, lab.ready_timeout_s
    )


def make_backend(cfg: Config, repository: str | None = None) -> Backend:
    """The configured backend; in-process teachers come from ``repository`` (default: teachers.repository_uri)."""
    lab = cfg.labeling
    if lab.backend == "triton":
        return triton_backend(lab, lab.triton_url)
    if lab.backend == "inprocess":
        return InProcessBackend(repository or cfg.teachers.repository_uri, lab.batch_size)
    raise ConfigError(f"labeling.backend must be inprocess, triton or triton_local, got {lab.backend!r}")


@contextmanager
def serving_backend(cfg: Config, repository: str | None = None) -> Iterator[Backend]:
    """The configured backend for the duration of a labeling run.

    ``triton_local`` starts a tritonserver on this machine over the teachers repository
    and labels through it over gRPC. Where no server gets ready (no binary, a failed
    start, a timeout) it raises :class:`ServingError`, unless
    ``labeling.triton_local_fallback`` is set: then it warns, and the in-process backend
    stands in with the reason in its ``fallback`` (recorded in the labeling report).
    Other backends are :func:`make_backend`'s.
    """
    lab = cfg.labeling
    if lab.backend != "triton_local":
        yield make_backend(cfg, repository)
        return
    from unisup.serving.triton_server import triton_server

    repository = repository or cfg.teachers.repository_uri
    server = triton_server(repository, ready_timeout_s=max(lab.ready_timeout_s, 180.0))
    try:
        running = server.__enter__()
    except (FileNotFoundError, RuntimeError, TimeoutError) as err:
        reason = str(err).splitlines()[0]
        if not lab.triton_local_fallback:
            raise ServingError(
                f"labeling.backend=triton_local: no local tritonserver got ready over {repository}: {reason}; "
                "fix the server, or set labeling.triton_local_fallback=true to label in-process"
            ) from err
        log.warning(
            "LABELING FALLBACK: no local tritonserver got ready (%s); labeling in-process instead, "
            "as labeling.triton_local_fallback=true allows",
            reason,
        )
        fallback = InProcessBackend(repository, lab.batch_size)
        fallback.name = f"inprocess (fallback: no local tritonserver: {reason})"
        fallback.fallback = f"triton_local -> inprocess: {reason}"
        yield fallback
        return
    try:
        backend = triton_backend(lab, running.grpc_url)
        backend.name = f"triton_local (tritonserver at {running.grpc_url})"
        yield backend
    finally:
        server.__exit__(None, None, None)


def read_pairs(pairs: str | pa.Table) -> tuple[pa.Table, str]:
    """The pairs table and its source name; CSV columns are read as text."""
    if isinstance(pairs, pa.Table):
        return pairs, "<table>"
    if str(pairs).endswith((".csv", ".tsv")):
        return parse_csv(storage.read_bytes(pairs), PAIRS, pairs, "\t" if str(pairs).endswith(".tsv") else ","), pairs
    try:
        return read_table(pairs), pairs
    except (pa.ArrowInvalid, OSError) as err:
        raise DataValidationError(PAIRS, str(pairs), f"not a readable Parquet file: {err}") from None


def check_pairs(table: pa.Table, source: str, known_items: set[str]) -> tuple[pa.Table, pa.Table]:
    """(accepted unique pairs sorted by query and item, quarantined rows with reasons)."""
    if "item_id" not in table.column_names and "product_id" in table.column_names:
        table = table.rename_columns(["item_id" if c == "product_id" else c for c in table.column_names])
    for column in ("query", "item_id"):
        if column not in table.column_names:
            raise DataValidationError(
                PAIRS, source, f"required column is missing (found: {', '.join(table.column_names)})", column=column
            )
    queries = table["query"].cast(pa.string()).to_pylist()
    items = table["item_id"].cast(pa.string()).to_pylist()
    reasons: list[str | None] = []
    seen: set[tuple[str, str]] = set()
    for query, item in zip(queries, items):
        if query is None or not query.strip():
            reasons.append("missing query")
        elif item is None or not item.strip():
            reasons.append("missing item_id")
        elif item not in known_items:
            reasons.append("item_id not in the catalog")
        elif (query, item) in seen:
            reasons.append("duplicate (query, item_id)")
        else:
            seen.add((query, item))
            reasons.append(None)
    bad = np.array([r is not None for r in reasons], dtype=bool)
    index = np.flatnonzero(bad)
    quarantined = pa.table(
        {
            "query": pa.array([queries[i] for i in index], pa.string()),
            "item_id": pa.array([items[i] for i in index], pa.string()),
            QUARANTINE_REASON: pa.array([reasons[i] for i in index], pa.string()),
            SOURCE_ROW: pa.array(index, pa.int64()),
        }
    )
    good = sorted((queries[i], items[i]) for i in np.flatnonzero(~bad))
    accepted = pa.table(
        {"query": pa.array([q for q, _ in good], pa.string()), "item_id": pa.array([t for _, t in good], pa.string())}
    )
    return accepted, quarantined


def labeling_settings(stages: list[TeacherStageConfig], rule: EscalationRule, cfg: Config) -> dict:
    """What the labels depend on besides the pairs: the stages, the rule, the shard size, the grades."""
    return {
        "stages": [asdict(s) for s in stages],
        "rule": asdict(rule),
        "shard_size": cfg.labeling.shard_size,
        "num_grades": cfg.data.num_grades,
    }


def _fingerprint(pairs: pa.Table, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    sink = io.BytesIO()
    for column in ("query", "item_id"):
        for value in pairs[column].to_pylist():
            sink.write(value.encode("utf-8") + b"\x00")
    digest.update(sink.getvalue())
    return digest.hexdigest()


def _shard_table(queries: list[str], items: list[str], result, stage_names: list[str]) -> pa.Table:
    stage_scores = [
        [None if np.isnan(p[i]).any() else p[i].tolist() for p in result.stage_probs] for i in range(len(queries))
    ]
    return pa.table(
        {
            "query": pa.array(queries, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "grade": pa.array(result.grades, pa.int8()),
            "probs": pa.array(result.probs.tolist(), pa.list_(pa.float32())),
            "stage": pa.array([stage_names[s] for s in result.decided_by], pa.string()),
            "stage_scores": pa.array(stage_scores, pa.list_(pa.list_(pa.float32()))),
        },
        schema=LABELS.arrow_schema(),
    )


def open_manifest(
    manifest_uri: str, fingerprint: str, num_pairs: int, num_shards: int, shard_size: int, names: list[str]
) -> tuple[dict, int]:
    """The shard manifest at ``manifest_uri`` (a new one when there is none) and its generation;
    raises when it records other pairs or settings."""
    generation = storage.generation(manifest_uri)
    if not generation:
        manifest = {
            "fingerprint": fingerprint,
            "num_pairs": num_pairs,
            "num_shards": num_shards,
            "shard_size": shard_size,
            "stages": names,
            "shards": {},
        }
        return manifest, generation
    manifest = json.loads(storage.read_text(manifest_uri))
    if manifest["fingerprint"] != fingerprint:
        raise InputError(
            f"{manifest_uri}: holds shards of other pairs or settings (fingerprint "
            f"{manifest['fingerprint'][:12]} != {fingerprint[:12]}); use another folder or remove it"
        )
    return manifest, generation


def label_shard(
    index: int,
    queries: list[str],
    items: list[str],
    texts: list[dict[str, str]],
    names: list[str],
    backend: Backend,
    rule: EscalationRule,
    cfg: Config,
    work: str,
) -> dict:
    """Label shard ``index`` of the pairs with the cascade and write it under ``work``; returns its
    manifest entry."""
    shard_size = cfg.labeling.shard_size
    lo, hi = index * shard_size, min((index + 1) * shard_size, len(queries))
    result = run_cascade(queries[lo:hi], items[lo:hi], texts, names, backend, rule, cfg.data.num_grades)
    file = f"shards/part-{index:05d}.parquet"
    write_table(_shard_table(queries[lo:hi], items[lo:hi], result, names), storage.join(work, file))
    return {
        "file": file,
        "rows": hi - lo,
        "pairs_per_stage": result.pairs_per_stage,
        "seconds_per_stage": [round(s, 4) for s in result.seconds_per_stage],
        "decided_per_stage": np.bincount(result.decided_by, minlength=len(names)).tolist(),
    }


def stage_totals(names: list[str], shards: list[dict]) -> dict:
    """Per stage, the pairs that reached it, the pairs it decided and its seconds, over the shards."""
    return {
        "pairs_per_stage": dict(zip(names, np.sum([s["pairs_per_stage"] for s in shards], axis=0).tolist())),
        "decided_per_stage": dict(zip(names, np.sum([s["decided_per_stage"] for s in shards], axis=0).tolist())),
        "seconds_per_stage": dict(
            zip(names, np.round(np.sum([s["seconds_per_stage"] for s in shards], axis=0), 3).tolist())
        ),
    }


def quarantine_counts(quarantined: pa.Table) -> dict[str, int]:
    """How many rows each quarantine reason holds."""
    if not quarantined.num_rows:
        return {}
    reasons, counts = np.unique(quarantined[QUARANTINE_REASON].to_pylist(), return_counts=True)
    return {str(reason): int(count) for reason, count in zip(reasons, counts)}


def label_pairs(
    pairs: str | pa.Table,
    out_uri: str,
    cfg: Config,
    backend: Backend | None = None,
    on_shard: Callable[[int], None] | None = None,
    repository: str | None = None,
) -> dict:
    """Label every accepted pair exactly once with the cascade; see the module docstring.

    ``backend`` defaults to :func:`make_backend` over the teachers ``repository`` (default:
    teachers.repository_uri), which also holds a calibrated escalation rule. ``on_shard(index)``
    is called after each shard is recorded. Returns the report (also written to ``<out>/report.json``).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    table, source = read_pairs(pairs)
    catalog = load_catalog(cfg.data.catalog_uri).accepted
    accepted, quarantined = check_pairs(table, source, set(catalog["product_id"].to_pylist()))
    if accepted.num_rows == 0:
        raise DataValidationError(PAIRS, source, f"no pair to label: all {table.num_rows} rows were quarantined")
    stages = cascade_stages(cfg)
    names = [s.name for s in stages]
    rule = escalation_rule(cfg, repository)
    queries, items = accepted["query"].to_pylist(), accepted["item_id"].to_pylist()
    texts = [stage_item_texts(catalog, stage, items) for stage in stages]
    shard_size = cfg.labeling.shard_size
    fingerprint = _fingerprint(accepted, labeling_settings(stages, rule, cfg))
    work = storage.join(cfg.labeling.work_uri, fingerprint[:16]) if cfg.labeling.work_uri else out_uri
    manifest_uri = storage.join(work, MANIFEST)
    num_shards = -(-accepted.num_rows // shard_size)
    manifest, generation = open_manifest(manifest_uri, fingerprint, accepted.num_rows, num_shards, shard_size, names)
    done_before = {int(k) for k, v in manifest["shards"].items() if storage.exists(storage.join(work, v["file"]))}
    if backend is None:
        backend = make_backend(cfg, repository)
    todo = [i for i in range(num_shards) if i not in done_before]
    if todo:
        backend.wait_ready(names)
    for index in tqdm(todo, desc="labeling shards", unit="shard"):
        manifest["shards"][str(index)] = label_shard(index, queries, items, texts, names, backend, rule, cfg, work)
        generation = storage.write_text(manifest_uri, json.dumps(manifest, indent=1), if_generation_match=generation)
        if on_shard is not None:
            on_shard(index)
    shards = [manifest["shards"][str(i)] for i in range(num_shards)]
    labels = pa.concat_tables([read_table(storage.join(work, shard["file"])) for shard in shards])
    checked = validate(labels, LABELS, storage.join(work, "shards"), RuleContext(num_grades=cfg.data.num_grades))
    write_table(checked.accepted, storage.join(out_uri, LABELS_FILE))
    write_table(quarantined, storage.join(out_uri, QUARANTINE_FILE))
    report = {
        "rows_in": table.num_rows,
        "labeled": checked.accepted.num_rows,
        "quarantined": quarantined.num_rows,
        "quarantine_reasons": quarantine_counts(quarantined),
        "shards": num_shards,
        "shards_resumed": len(done_before),
        "shards_labeled_now": len(todo),
        "backend": getattr(backend, "name", type(backend).__name__),
        "fallback": getattr(backend, "fallback", ""),  # why the configured backend did not label, if so
        "stages": names,
        **stage_totals(names, shards),
        "grade_counts": np.bincount(checked.accepted["grade"].to_numpy(), minlength=cfg.data.num_grades).tolist(),
        "seconds": round(time.perf_counter() - started, 2),
        "settings": {"labeling": asdict(cfg.labeling), "rule": asdict(rule), "fingerprint": fingerprint},
    }
    if report["rows_in"] != report["labeled"] + report["quarantined"]:
        raise AssertionError(
            f"{source}: rows in {report['rows_in']} != labeled {report['labeled']} + "
            f"quarantined {report['quarantined']}"
        )
    storage.write_text(storage.join(out_uri, REPORT_FILE), json.dumps(report, indent=1))
    return report


def read_labels(uri: str) -> pa.Table:
    """The labels table from a labeling output folder (or a labels Parquet file)."""
    return read_table(uri if str(uri).endswith(".parquet") else storage.join(uri, LABELS_FILE))
