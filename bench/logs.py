"""Log simulator throughput, and extraction throughput and peak memory at 1M, 10M and 30M rows.

The simulator runs on the bundled sample with the real MiniLM dense channel (item
embeddings cached by ``unisup.channels.cached_encode``) for ``BENCH_LOGS_REQUESTS``
requests (10k by default); its logs are the base. Larger logs are the base replicated
with DuckDB (event, request, user and session ids suffixed per copy, so ids stay unique and
users look like the base's to the bot filter; the injected malformed rows are
replicated with them) up to each size in ``BENCH_LOGS_SIZES``
(1M, 10M and 30M by default), written date-partitioned, ``FILES_PER_DAY`` files a day. Each
extraction runs in its own process, which reports its wall time and peak RSS (``VmHWM``;
``ru_maxrss`` would carry the parent's peak over ``exec``); it runs ``BENCH_LOGS_REPEATS``
times (3 by default) and the figures are the medians.

At each size the sharded extraction (``unisup.log_shards``, ``BENCH_LOGS_SHARDS`` shards, 4 by
default) also runs, its rounds one after the other in one process as ``unisup extract-logs
--shards`` does: its wall time is the work of all the tasks together, and ``critical_path_s``
(the slowest shard of each round plus the reduces) is the wall time when each shard has a
node of its own, as under ``dsl.ParallelFor`` on a cluster. That figure is derived from the
measured stage times, not measured on several nodes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL_LIMIT = "128MB"  # a second run per size under a tighter DuckDB memory limit than the default
FILES_PER_DAY = 8

_EXTRACT = """
import json, sys, time
from unisup.config import load_config
from unisup.logs import extract_logs
cfg = load_config("local", sys.argv[4:])
start = time.perf_counter()
shards = int(sys.argv[3])
if shards:
    import shutil
    from unisup.log_shards import extract_logs_sharded
    shutil.rmtree(sys.argv[2] + ".work", ignore_errors=True)  # a fresh run: no stage kept from the last one
    report, _ = extract_logs_sharded(sys.argv[1], sys.argv[2], sys.argv[2] + ".holdout", cfg.extraction,
                                     cfg.data.catalog_uri, shards, sys.argv[2] + ".work")
else:
    report = extract_logs(sys.argv[1], sys.argv[2], cfg.extraction, cfg.data.catalog_uri)
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - start, "rows_in": report["rows_in"],
                  "rows_quarantined": report["rows_quarantined"], "pairs": report["pairs"],
                  "peak_rss_mib": peak_kib / 1024,
                  "memory_limit": cfg.extraction.duckdb_memory_limit,
                  "stage_seconds": report.get("stage_seconds")}))
"""


def simulate_base(out: Path, requests: int) -> dict:
    from unisup.config import load_config
    from unisup.data.sample import load_dataset
    from unisup.simulator import simulate_logs

    cfg = load_config("local", [f"simulator.num_requests={requests}", "simulator.num_days=2"])
    start = time.perf_counter()
    summary = simulate_logs(
        load_dataset(cfg.data), cfg.simulator, cfg.channels, cfg.data.num_grades, out_uri=str(out), progress=True
    )
    return {
        "requests": summary["requests"],
        "rows": summary["rows"],
        "setup_s": summary["setup_seconds"],
        "requests_per_s": summary["requests_per_second"],
        "total_s": round(time.perf_counter() - start, 2),
        "bias": summary["bias"],
    }


def replicate(base: Path, out: Path, rows: int) -> None:
    """``rows`` log rows made of copies of the base logs, date-partitioned under ``out``."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = f"read_parquet('{base}/date=*/*.parquet', hive_partitioning = true)"  # adds the folders' date
    base_rows = con.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0]
    copies = -(-rows // base_rows)
    con.execute(
        f"""
        COPY (
          SELECT * REPLACE (event_id || '~' || k AS event_id, request_id || '~' || k AS request_id,
                            user_id || '~' || k AS user_id, session_id || '~' || k AS session_id)
          , k % {FILES_PER_DAY} AS part
          FROM {source}, range({copies}) t(k) LIMIT {rows}
        ) TO '{out}' (FORMAT PARQUET, COMPRESSION ZSTD, PARTITION_BY (date, part))
        """
    )
    con.close()


def _extract_once(logs: Path, out: Path, overrides: tuple[str, ...], shards: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _EXTRACT, str(logs), str(out / "engagement.parquet"), str(shards), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"extraction of {logs} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def extract(logs: Path, out: Path, overrides: tuple[str, ...] = (), shards: int = 0) -> dict:
    """Median seconds and peak RSS of repeated extractions (each in a fresh process); with
    ``shards``, the sharded extraction, with the median critical path over its stage times."""
    repeats = int(os.environ.get("BENCH_LOGS_REPEATS", 3))
    runs = [_extract_once(logs, out, overrides, shards) for _ in range(repeats)]
    figures = dict(runs[0])
    stages = figures.pop("stage_seconds")
    if shards:
        paths = [sum(max(v) if isinstance(v, list) else v for v in r["stage_seconds"].values()) for r in runs]
        figures["shards"] = shards
        figures["critical_path_s"] = round(statistics.median(paths), 2)
        figures["stage_seconds"] = stages
    figures["seconds"] = statistics.median(r["seconds"] for r in runs)
    figures["rows_per_s"] = round(figures["rows_in"] / figures["seconds"], 1)
    figures["seconds"] = round(figures["seconds"], 2)
    figures["seconds_all"] = [round(r["seconds"], 2) for r in runs]
    figures["peak_rss_mib"] = round(statistics.median(r["peak_rss_mib"] for r in runs), 1)
    return figures


def run() -> dict:
    from bench.harness import machine

    requests = int(os.environ.get("BENCH_LOGS_REQUESTS", 10_000))
    sizes = [int(s) for s in os.environ.get("BENCH_LOGS_SIZES", "1000000,10000000,30000000").split(",")]
    figures: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        root = Path(tmp)
        figures["simulator"] = simulate_base(root / "base", requests)
        figures["extraction_base"] = extract(root / "base", root / "out-base")
        for size in sizes:
            start = time.perf_counter()
            replicate(root / "base", root / f"logs-{size}", size)
            generated = round(time.perf_counter() - start, 2)
            figures[f"extraction_{size}"] = {
                "generate_s": generated,
                **extract(root / f"logs-{size}", root / f"out-{size}"),
            }
            shards = int(os.environ.get("BENCH_LOGS_SHARDS", 4))
            sharded = extract(root / f"logs-{size}", root / f"out-{size}-sharded", shards=shards)
            single = figures[f"extraction_{size}"]["seconds"]
            sharded["work_ratio_to_single"] = round(sharded["seconds"] / single, 2)
            sharded["speedup_critical_path"] = round(single / sharded["critical_path_s"], 2)
            figures[f"extraction_{size}_sharded_{shards}"] = sharded
            small = (f"extraction.duckdb_memory_limit={SMALL_LIMIT}",)
            try:  # a limit too tight for the row count fails (DuckDB out of memory): recorded, not fatal
                figures[f"extraction_{size}_limit_{SMALL_LIMIT}"] = extract(
                    root / f"logs-{size}", root / f"out-{size}-small", small
                )
            except RuntimeError as err:
                reason = next(line for line in str(err).splitlines()[::-1] if "Error" in line)
                figures[f"extraction_{size}_limit_{SMALL_LIMIT}"] = {"failed": reason}
    return figures


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("logs")
