"""Log extraction over shards: the same tables as :func:`unisup.logs.extract_logs`, with the
work spread over tasks (``dsl.ParallelFor`` on Kubernetes) that each read only their files.

Three rules of the extraction need the whole window: an event id is a duplicate when it
occurs anywhere else, a user is a bot by their requests over the window, and propensities
and Beta priors come from every (query, item, slot). So the extraction is an exact
map-reduce in three rounds, each map reading one shard's files and writing small
mergeable partial tables, each reduce merging them with the same SQL as the single-process
run:

1. :func:`plan_extraction`: the files of each window (training, held-out) in order, cut into
   ``num_shards`` contiguous shards; every task reads this plan, so all see the same files;
2. :func:`scan_shard` -> the event id of each row, hash-partitioned into ``num_shards`` buckets;
   :func:`find_duplicates`, one task per bucket, reads that bucket of every scan (a shuffle:
   every id meets its other copies) -> duplicated ids and the key of their first row;
   :func:`gather_duplicates` -> those of all buckets (few), with the files' columns and channels;
3. :func:`validate_shard` -> the shard's quarantine and per-request statistics of its accepted
   rows, hash-partitioned by user; :func:`find_bots`, one task per bucket, -> the bot users
   among that bucket's users; :func:`gather_bots` -> all of them;
4. :func:`aggregate_shard` -> per (query, item, slot) statistics of the rows used;
   :func:`merge_extraction` -> propensities, priors, the engagement table, the quarantine in
   file and row order and the report, with rows in = accepted + quarantined checked.

Every stage writes one folder with a sub-folder per window and, last, its record::

    <stage>/training/requests.parquet  <stage>/holdout/...  <stage>/stage.json

:func:`extract_logs_sharded` runs the rounds in this process (the CLI's ``--shards``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unisup import logs, storage
from unisup.config import ConfigError, ExtractionConfig, from_dict, to_dict
from unisup.errors import ArtifactMismatch, InputError
from unisup.schemas import RAW_LOGS, DataValidationError

TRAINING, HOLDOUT = "training", "holdout"
STAGE = "stage.json"


def plan_extraction(
    logs_uri: str,
    cfg: ExtractionConfig,
    catalog_uri: str,
    num_shards: int,
    start_date: str | None = None,
    end_date: str | None = None,
) -> dict:
    """The files of the training window and (with ``cfg.holdout_days``) of the held-out window,
    each with its global ``file_index`` (the order of the rows) and its shard: a window's files
    are cut into ``num_shards`` contiguous runs (a window with fewer files leaves shards idle).
    A shard reads whole files, so ``num_shards`` is from 1 to the files of the largest window."""
    logs.check_settings(cfg)
    if num_shards < 1:
        raise ConfigError(f"num_shards={num_shards}: expected at least 1")
    found = logs.partitions(logs_uri)
    training, held_out = logs.holdout_windows(logs_uri, cfg, start_date, end_date, found)
    windows = []
    for name, window in ((TRAINING, training), (HOLDOUT, held_out)):
        if window is None:
            continue
        first, last = window
        chosen = [(index, uri) for index, (date, uri) in enumerate(found) if first <= date <= last]
        if not chosen:
            raise DataValidationError("raw_logs", logs_uri, f"no partition in the window {first} .. {last}")
        files = [
            {"uri": uri, "file_index": index, "shard": position * num_shards // len(chosen)}
            for position, (index, uri) in enumerate(chosen)
        ]
        windows.append({"name": name, "window": [first, last], "files": files})
    most = max(len(w["files"]) for w in windows)
    if num_shards > most:
        raise ConfigError(
            f"num_shards={num_shards}: a shard reads whole files and the largest window has {most} log file(s); "
            f"use at most {most} shards"
        )
    return {
        "logs_uri": logs_uri,
        "catalog_uri": catalog_uri,
        "num_shards": num_shards,
        "config": to_dict(cfg),
        "windows": windows,
    }


def write_plan(plan: dict, uri: str) -> None:
    storage.write_text(uri, json.dumps(plan, indent=1))


def read_plan(uri: str) -> dict:
    return json.loads(storage.read_text(uri))


def _config(plan: dict) -> ExtractionConfig:
    cfg = from_dict(ExtractionConfig, plan["config"])
    logs.check_settings(cfg)
    return cfg


def _shard_windows(plan: dict, shard: int):
    """(window entry, its files in this shard) for each window where the shard has files."""
    if not 0 <= shard < plan["num_shards"]:
        raise IndexError(f"shard {shard} out of range 0..{plan['num_shards'] - 1}")
    for window in plan["windows"]:
        files = [f for f in window["files"] if f["shard"] == shard]
        if files:
            yield window, files


def _by_shard(plan: dict, folders: list[str]) -> dict[int, tuple[str, dict]]:
    """Stage folders by the shard (or bucket) their record names, with the record; the folders
    may come in any order. A stage of another plan is an error naming it."""
    found = {}
    for folder in folders:
        record = _read_stage(folder)
        if record["plan"] != plan_digest(plan):
            raise ArtifactMismatch(f"{folder}: stage output of another extraction plan")
        found[record["shard"]] = (folder, record)
    return found


def _check_complete(plan: dict, records: dict, window: str) -> None:
    """Every shard with files in the window has its stage output, or an error naming the first missing."""
    entry = next(w for w in plan["windows"] if w["name"] == window)
    for shard in sorted({f["shard"] for f in entry["files"]}):
        if shard not in records:
            raise FileNotFoundError(f"shard {shard} of the {window} window: no stage output")


def _parts(plan: dict, folders: list[str], window: str, name: str) -> list[str]:
    """``<folder>/<window>/<name>`` of every shard with files in the window, in shard order.
    A missing one is an error naming it."""
    records = _by_shard(plan, folders)
    _check_complete(plan, records, window)
    entry = next(w for w in plan["windows"] if w["name"] == window)
    parts = []
    for shard in sorted({f["shard"] for f in entry["files"]}):
        uri = storage.join(records[shard][0], window, name)
        if not storage.exists(uri):
            raise FileNotFoundError(f"shard {shard} of the {window} window: no {name} ({uri})")
        parts.append(uri)
    return parts


def plan_digest(plan: dict) -> str:
    """A digest of the plan: a stage's outputs belong to the plan with this digest."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def _write_stage(
    folder: str, plan: dict, stage: str, shard: int | None, seconds: float, windows: dict, **extra
) -> dict:
    """The stage's record, written after all its outputs: a folder without one is unfinished."""
    record = {"stage": stage, "shard": shard, "plan": plan_digest(plan), "seconds": round(seconds, 3)}
    record |= {"windows": windows, **extra}
    storage.write_text(storage.join(folder, STAGE), json.dumps(record, indent=1))
    return record


def _read_stage(folder: str) -> dict:
    return json.loads(storage.read_text(storage.join(folder, STAGE)))


@dataclass
class _OpenShard:
    con: object  # the DuckDB connection, with the ``src`` view of the shard's files
    tmp: str
    rows_in: int
    columns: set[str]  # the columns the shard's files have

    def load(self, name: str, uri: str) -> None:
        """A temporary table ``name`` from a Parquet file (local or gs://)."""
        with local_parts([uri], self.tmp) as (path,):
            self.con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM read_parquet($path)", {"path": path})

    def copy(self, sql: str, uri: str) -> None:
        """Write the rows of ``sql`` as Parquet to ``uri``."""
        path = str(Path(self.tmp) / "out.parquet")
        self.con.execute(f"COPY ({sql}) TO $path (FORMAT PARQUET, COMPRESSION ZSTD)", {"path": path})
        storage.upload_file(path, uri)


@contextmanager
def _open_shard(files: list[dict], cfg: ExtractionConfig, channels: list[str] | None = None) -> Iterator[_OpenShard]:
    """One shard's files of one window, staged locally and opened as the ``src`` view with a
    ``rank_<channel>`` column for each of the window's ``channels`` (NULL where its files lack it)."""
    uris = [f["uri"] for f in files]
    with tempfile.TemporaryDirectory(prefix="unisup-shard-") as tmp, logs.staged(uris) as local:
        found = logs.read_log_files(local, uris, [f["file_index"] for f in files])
        with logs.connection(cfg, tmp, found) as con:
            rows_in = logs.open_source(con, found, channels or [])
            yield _OpenShard(con, tmp, rows_in, {name for file in found for name in file.schema.names})


def _write_buckets(part: _OpenShard, sql: str, key: str, prefix: str, out_uri: str, buckets: int) -> dict:
    """The rows of ``sql`` hash-partitioned by ``key`` into ``buckets`` buckets, as
    ``<out_uri>/<prefix>-<bucket>-<n>.parquet`` (a bucket without rows is not written); the
    files written, by bucket. DuckDB's ``hash`` is the same in every task of a run, which all
    run one image."""
    folder = Path(part.tmp) / prefix
    part.con.execute(
        f"COPY (SELECT *, hash({key}) % $buckets::UBIGINT AS bucket FROM ({sql})) "
        "TO $folder (FORMAT PARQUET, COMPRESSION SNAPPY, PARTITION_BY (bucket))",
        {"buckets": buckets, "folder": str(folder)},
    )
    written: dict[int, list[str]] = {}
    for path in sorted(folder.glob("bucket=*/*.parquet")):
        bucket = int(path.parent.name.split("=")[1])
        file = f"{prefix}-{bucket:05d}-{len(written.get(bucket, [])):03d}.parquet"
        storage.upload_file(path, storage.join(out_uri, file))
        written.setdefault(bucket, []).append(file)
    return written


def _bucket_records(plan: dict, folders: list[str], bucket: int) -> dict[int, tuple[str, dict]]:
    """The records of the shards' stage folders (read by URI, local or gs://) for one bucket task."""
    if not 0 <= bucket < plan["num_shards"]:
        raise IndexError(f"bucket {bucket} out of range 0..{plan['num_shards'] - 1}")
    for uri in folders:
        if "://" in uri and not storage.is_gcs(uri):
            raise InputError(f"{uri}: shard outputs are read by URI, local or gs:// (put the pipeline root on GCS)")
    return _by_shard(plan, folders)


def _bucket_parts(plan: dict, records: dict, window: str, bucket: int) -> list[str]:
    """The files of one bucket in every shard's output of a window."""
    _check_complete(plan, records, window)
    return [
        storage.join(folder, window, file)
        for _, (folder, record) in sorted(records.items())
        for file in record["windows"].get(window, {}).get("buckets", {}).get(str(bucket), [])
    ]


def _gather(plan: dict, buckets: list[str], table: str, out_uri: str, stage: str, combine) -> dict:
    """The ``table`` of every bucket, one per window, and ``combine`` of the buckets' window
    records; the record keeps each bucket's time."""
    started = time.perf_counter()
    records = _by_shard(plan, buckets)
    missing = sorted(set(range(plan["num_shards"])) - set(records))
    if missing:
        raise FileNotFoundError(f"{stage}: no output of bucket(s) {missing}")
    windows = {}
    with tempfile.TemporaryDirectory(prefix="unisup-gather-") as tmp:
        for window in plan["windows"]:
            name = window["name"]
            parts = [storage.join(records[b][0], name, table) for b in sorted(records)]
            _concatenate(parts, storage.join(out_uri, name, table), tmp)
            windows[name] = combine([records[b][1]["windows"][name] for b in sorted(records)])
    seconds = time.perf_counter() - started
    bucket_seconds = [records[b][1]["seconds"] for b in sorted(records)]
    return _write_stage(out_uri, plan, stage, None, seconds, windows, bucket_seconds=bucket_seconds)


def scan_shard(plan: dict, shard: int, out_uri: str) -> dict:
    """Round 1 map: the event id and key of each of the shard's rows, hash-partitioned by event
    id into ``num_shards`` buckets (``events-<bucket>-<n>.parquet``), and the columns its files have."""
    started, cfg, windows = time.perf_counter(), _config(plan), {}
    for window, files in _shard_windows(plan, shard):
        name = window["name"]
        with _open_shard(files, cfg) as part:
            written = _write_buckets(
                part, logs.EVENT_KEYS_SQL, "event_id", "events", storage.join(out_uri, name), plan["num_shards"]
            )
            windows[name] = {"rows_in": part.rows_in, "columns": sorted(part.columns), "buckets": written}
    return _write_stage(out_uri, plan, "scan", shard, time.perf_counter() - started, windows)


_NO_EVENTS = f"(SELECT CAST(NULL AS VARCHAR) AS event_id, CAST(0 AS BIGINT) AS {logs.ROW_KEY} WHERE false)"


def find_duplicates(plan: dict, scans: list[str], bucket: int, out_uri: str) -> dict:
    """Round 1 reduce, one task per bucket: the duplicated event ids of the bucket in each window
    (``duplicates.parquet``), from that bucket of every scan (``scans``: their locations), and
    the columns and channels of all the window's files."""
    started, cfg, windows = time.perf_counter(), _config(plan), {}
    records = _bucket_records(plan, scans, bucket)
    with tempfile.TemporaryDirectory(prefix="unisup-dups-") as tmp, logs.connection(cfg, tmp) as con:
        for window in plan["windows"]:
            name = window["name"]
            parts = _bucket_parts(plan, records, name, bucket)
            present = sorted({c for _, r in records.values() for c in r["windows"].get(name, {}).get("columns", [])})
            channels = sorted(c[len("rank_") :] for c in RAW_LOGS.dynamic_names(present))
            path = f"{tmp}/{name}-duplicates.parquet"
            with local_parts(parts, tmp) as local:
                keys = _parts_view(con, f"{name}_events", local, _NO_EVENTS)
                con.execute(
                    f"COPY ({logs.duplicates_sql(keys)}) TO $path (FORMAT PARQUET, COMPRESSION ZSTD)", {"path": path}
                )
            storage.upload_file(path, storage.join(out_uri, name, "duplicates.parquet"))
            duplicated = con.execute("SELECT count(*) FROM read_parquet($path)", {"path": path}).fetchall()[0][0]
            windows[name] = {"columns": present, "channels": channels, "duplicated_event_ids": int(duplicated)}
    return _write_stage(out_uri, plan, "duplicates", bucket, time.perf_counter() - started, windows)


def gather_duplicates(plan: dict, buckets: list[str], out_uri: str) -> dict:
    """The duplicated event ids of every bucket, one table per window (few rows: only ids that
    occur more than once), with the window's columns and channels."""

    def combine(found: list[dict]) -> dict:
        total = sum(f["duplicated_event_ids"] for f in found)
        return {"columns": found[0]["columns"], "channels": found[0]["channels"], "duplicated_event_ids": total}

    return _gather(plan, buckets, "duplicates.parquet", out_uri, "gather_duplicates", combine)


def validate_shard(plan: dict, shard: int, duplicates_uri: str, out_uri: str) -> dict:
    """Round 2 map: the shard's quarantine (``quarantine.parquet``, file and row order) and the
    per-request statistics of its accepted rows, hash-partitioned by user into ``num_shards``
    buckets (``requests-<bucket>-<n>.parquet``)."""
    started, cfg, windows = time.perf_counter(), _config(plan), {}
    known = logs.known_items(plan["catalog_uri"])
    found = _read_stage(duplicates_uri)["windows"]
    for window, files in _shard_windows(plan, shard):
        name = window["name"]
        with _open_shard(files, cfg, found[name]["channels"]) as part:
            logs.load_known(part.con, known, part.tmp)
            part.load("dups", storage.join(duplicates_uri, name, "duplicates.parquet"))
            local_quarantine = f"{part.tmp}/quarantine.parquet"
            by_reason = logs.quarantine(
                part.con, tuple(window["window"]), cfg, found[name]["channels"], local_quarantine
            )
            storage.upload_file(local_quarantine, storage.join(out_uri, name, "quarantine.parquet"))
            requests = logs.per_request_sql(logs.CLEAN_REQUEST_ROWS_SQL)
            written = _write_buckets(
                part, requests, "user_id", "requests", storage.join(out_uri, name), plan["num_shards"]
            )
            windows[name] = {"rows_in": part.rows_in, "quarantined_by_reason": by_reason, "buckets": written}
    return _write_stage(out_uri, plan, "validate", shard, time.perf_counter() - started, windows)


_NO_REQUESTS = (
    "(SELECT CAST(NULL AS VARCHAR) AS user_id, CAST(NULL AS DATE) AS day, CAST(NULL AS VARCHAR) AS user_agent,"
    " CAST(NULL AS VARCHAR) AS request_id, CAST(0 AS BIGINT) AS n, CAST(0 AS BIGINT) AS impressions,"
    " CAST(0 AS BIGINT) AS clicks WHERE false)"
)


def find_bots(plan: dict, validations: list[str], bucket: int, out_uri: str) -> dict:
    """Round 2 reduce, one task per bucket: the bot users of the bucket in each window
    (``bots.parquet``), from that bucket of every shard's per-request statistics (all of a
    user's requests are in one bucket), with the rows accepted and the counts by rule."""
    started, cfg, windows = time.perf_counter(), _config(plan), {}
    records = _bucket_records(plan, validations, bucket)
    with tempfile.TemporaryDirectory(prefix="unisup-bots-") as tmp:
        for window in plan["windows"]:
            name = window["name"]
            path = f"{tmp}/{name}-bots.parquet"
            with (
                logs.connection(cfg, tmp) as con,
                local_parts(_bucket_parts(plan, records, name, bucket), tmp) as local,
            ):
                requests = _parts_view(con, "requests", local, _NO_REQUESTS)
                windows[name] = logs.find_bots(con, cfg, logs.per_request_sql(f"SELECT * FROM {requests}"))
                con.execute("COPY bots TO $path (FORMAT PARQUET)", {"path": path})
            storage.upload_file(path, storage.join(out_uri, name, "bots.parquet"))
    return _write_stage(out_uri, plan, "bots", bucket, time.perf_counter() - started, windows)


def gather_bots(plan: dict, buckets: list[str], out_uri: str) -> dict:
    """The bot users of every bucket, one table per window, and their counts summed."""

    def combine(found: list[dict]) -> dict:
        total = {k: sum(f[k] for f in found) for k in ("rows_accepted", "rows_bot_filtered", "bot_users")}
        rules = found[0]["bot_users_by_rule"]
        return total | {"bot_users_by_rule": {r: sum(f["bot_users_by_rule"][r] for f in found) for r in rules}}

    return _gather(plan, buckets, "bots.parquet", out_uri, "gather_bots", combine)


def aggregate_shard(plan: dict, shard: int, duplicates_uri: str, bots_uri: str, out_uri: str) -> dict:
    """Round 3 map: per (query, item, slot) statistics of the shard's rows used, the accepted
    rows of users who are not bots (``slots.parquet``)."""
    started, cfg, windows = time.perf_counter(), _config(plan), {}
    known = logs.known_items(plan["catalog_uri"])
    found = _read_stage(duplicates_uri)["windows"]
    for window, files in _shard_windows(plan, shard):
        name = window["name"]
        channels = found[name]["channels"]
        with _open_shard(files, cfg, channels) as part:
            logs.load_known(part.con, known, part.tmp)
            part.load("dups", storage.join(duplicates_uri, name, "duplicates.parquet"))
            part.load("bots", storage.join(bots_uri, name, "bots.parquet"))
            logs.quarantine(part.con, tuple(window["window"]), cfg, channels, None)
            part.copy(logs.slot_stats_sql(channels), storage.join(out_uri, name, "slots.parquet"))
            windows[name] = {"rows_in": part.rows_in}
    return _write_stage(out_uri, plan, "aggregate", shard, time.perf_counter() - started, windows)


def merge_extraction(
    plan: dict,
    duplicates_uri: str,
    bots_uri: str,
    validations: list[str],
    aggregations: list[str],
    outputs: dict[str, tuple[str, str | None, str | None]],
    scans: list[str] | None = None,
) -> dict[str, dict]:
    """Round 3 reduce: for each window, ``outputs[name] = (engagement, quarantine, report)``
    (the last two None: beside the engagement) gets the engagement table from the merged
    slot statistics, the shards' quarantines in order, and the report of
    :func:`unisup.logs.extract_logs` with the shards' timings. Returns the reports."""
    started, cfg = time.perf_counter(), _config(plan)
    found, bots = _read_stage(duplicates_uri), _read_stage(bots_uri)
    stages = {
        "scan": [_read_stage(f) for f in scans or []],
        "validate": [_read_stage(f) for f in validations],
        "aggregate": [_read_stage(f) for f in aggregations],
    }
    reports = {}
    with tempfile.TemporaryDirectory(prefix="unisup-merge-") as tmp:
        for window in plan["windows"]:
            name = window["name"]
            out_uri, quarantine_uri, report_uri = outputs[name]
            quarantine_uri, report_uri = logs.output_uris(out_uri, quarantine_uri, report_uri)
            channels = found["windows"][name]["channels"]
            validated = [s["windows"][name] for s in stages["validate"] if name in s["windows"]]
            rows_in = sum(v["rows_in"] for v in validated)
            by_reason: dict[str, int] = {}
            for v in validated:
                for reason, count in v["quarantined_by_reason"].items():
                    by_reason[reason] = by_reason.get(reason, 0) + count
            by_reason = dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
            local_engagement = f"{tmp}/{name}-engagement.parquet"
            with logs.connection(cfg, tmp) as con:
                with local_parts(_parts(plan, aggregations, name, "slots.parquet"), tmp) as parts:
                    con.read_parquet(parts, hive_partitioning=False).to_view("slot_parts")
                    con.execute(f"CREATE TEMP TABLE qip AS {logs.merged_slot_stats_sql('slot_parts', channels)}")
                totals = logs.write_engagement(con, cfg, channels, local_engagement)
            window_bots = bots["windows"][name]
            logs.check_accounting(plan["logs_uri"], rows_in, by_reason, window_bots, totals)
            logs.check_engagement_schema(local_engagement, channels, out_uri)
            storage.upload_file(local_engagement, out_uri)
            _concatenate(_parts(plan, validations, name, "quarantine.parquet"), quarantine_uri, tmp)
            seconds = time.perf_counter() - started
            timings = {stage: [s["seconds"] for s in records] for stage, records in stages.items() if records}
            timings |= {"duplicates": found["bucket_seconds"], "gather_duplicates": found["seconds"]}
            timings |= {"bots": bots["bucket_seconds"], "gather_bots": bots["seconds"], "merge": round(seconds, 3)}
            critical_path = sum(max(v) if isinstance(v, list) else v for v in timings.values())
            report = logs.extraction_report(
                logs_uri=plan["logs_uri"],
                out_uri=out_uri,
                quarantine_uri=quarantine_uri,
                window=window["window"],
                files=len(window["files"]),
                rows_in=rows_in,
                by_reason=by_reason,
                bots=window_bots,
                totals=totals,
                channels=channels,
                cfg=cfg,
                seconds=critical_path,
            )
            report |= {
                "shards": plan["num_shards"],
                "duplicated_event_ids": found["windows"][name]["duplicated_event_ids"],
                "stage_seconds": timings,
            }
            logs.write_report(report, report_uri)
            reports[name] = report
    return reports


def _parts_view(con, name: str, paths: list[str], empty: str) -> str:
    """The view ``name`` over the Parquet files at ``paths`` (handed to DuckDB as values), or
    the ``empty`` relation when there are none."""
    if not paths:
        return empty
    con.read_parquet(paths, hive_partitioning=False).to_view(name)
    return name


@contextmanager
def local_parts(uris: list[str], tmp: str) -> Iterator[list[str]]:
    """Local paths of Parquet files: themselves when local, else copies under ``tmp``."""
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        yield [
            str(storage.download_file(uri, Path(folder) / f"{i:05d}.parquet")) if storage.is_gcs(uri) else uri
            for i, uri in enumerate(uris)
        ]


def _concatenate(parts: list[str], out_uri: str, tmp: str) -> int:
    """The Parquet parts, one after the other (row groups streamed), into ``out_uri``."""
    path = Path(tmp) / "concatenated.parquet"
    rows = 0
    with local_parts(parts, tmp) as local:
        schema = pa.schema([field.with_nullable(True) for field in pq.read_schema(local[0])])
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for part in local:
                file = pq.ParquetFile(part)
                for group in range(file.num_row_groups):
                    table = file.read_row_group(group)
                    writer.write_table(table.cast(schema))
                    rows += table.num_rows
    storage.upload_file(path, out_uri)
    return rows


def extract_logs_sharded(
    logs_uri: str,
    out_uri: str,
    holdout_uri: str,
    cfg: ExtractionConfig,
    catalog_uri: str,
    num_shards: int,
    work_uri: str,
    quarantine_uri: str | None = None,
    report_uri: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
) -> tuple[dict, dict | None]:
    """Every round of the sharded extraction in this process, its stage folders under
    ``work_uri``: the outputs of :func:`unisup.logs.extract_logs_with_holdout`. Run again
    after a crash, it keeps the stages already finished for the same plan and redoes the rest."""
    plan = plan_extraction(logs_uri, cfg, catalog_uri, num_shards, start_date, end_date)
    write_plan(plan, storage.join(work_uri, "plan.json"))
    shards = range(num_shards)
    scans = [storage.join(work_uri, f"scan-{k:05d}") for k in shards]
    validations = [storage.join(work_uri, f"validate-{k:05d}") for k in shards]
    aggregations = [storage.join(work_uri, f"aggregate-{k:05d}") for k in shards]
    buckets = [storage.join(work_uri, f"duplicates-{b:05d}") for b in shards]
    bot_buckets = [storage.join(work_uri, f"bots-{b:05d}") for b in shards]
    duplicates, bots = storage.join(work_uri, "duplicates"), storage.join(work_uri, "bots")

    def once(folder: str, stage, *args) -> None:
        uri = storage.join(folder, STAGE)
        if not (storage.exists(uri) and _read_stage(folder)["plan"] == plan_digest(plan)):
            stage(plan, *args, folder)

    for k in shards:
        once(scans[k], scan_shard, k)
    for b in shards:
        once(buckets[b], find_duplicates, scans, b)
    once(duplicates, gather_duplicates, buckets)
    for k in shards:
        once(validations[k], validate_shard, k, duplicates)
    for b in shards:
        once(bot_buckets[b], find_bots, validations, b)
    once(bots, gather_bots, bot_buckets)
    for k in shards:
        once(aggregations[k], aggregate_shard, k, duplicates, bots)
    outputs = {TRAINING: (out_uri, quarantine_uri, report_uri), HOLDOUT: (holdout_uri, None, None)}
    reports = merge_extraction(plan, duplicates, bots, validations, aggregations, outputs, scans)
    if HOLDOUT not in reports:
        logs.write_empty_like(out_uri, holdout_uri)
    return reports[TRAINING], reports.get(HOLDOUT)
