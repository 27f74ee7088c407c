"""Log simulator throughput, and extraction throughput and peak memory of both engines,
DuckDB and Spark local, at 1M and 10M rows.

The simulator runs on the bundled sample with the real MiniLM dense channel (item
embeddings cached by ``unisup.encoders.cached_encode``) for ``BENCH_LOGS_REQUESTS``
requests (10k by default); its logs are the base. Larger logs are the base replicated
with DuckDB (event, request, user and session ids suffixed per copy, so ids stay unique and
users look like the base's to the bot filter; the injected malformed rows are
replicated with them) up to each size in ``BENCH_LOGS_SIZES`` (1M and 10M by default),
written date-partitioned, ``FILES_PER_DAY`` files a day. Each extraction runs in its own
process, for each engine in ``BENCH_LOGS_ENGINES`` (duckdb and spark, ``local[N]`` with N the
machine's cores), ``BENCH_LOGS_REPEATS`` times (3 by default; Spark's ``BENCH_LOGS_SPARK_REPEATS``
when set); the figures are the medians.

Peak RSS is ``VmHWM`` of the process (``ru_maxrss`` would carry the parent's peak over
``exec``); for Spark, that of the Python process plus that of the JVM it starts (its child),
read just before the session stops: an upper bound of their peak together. Spark's
``seconds`` is the extraction with the session already started; ``startup_s`` is the start.
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
FILES_PER_DAY = 8

_EXTRACT = """
import json, os, sys, tempfile, time
from unisup.config import load_config
from unisup.logs import extract_logs

def peak_mib(pid):
    status = open(f"/proc/{pid}/status").read().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

cfg = load_config("local", sys.argv[3:])
figures = {"engine": cfg.extraction.engine}
with tempfile.TemporaryDirectory() as work:
    spark = None
    if cfg.extraction.engine == "spark":
        from unisup.engines import start_spark_session
        start = time.perf_counter()
        spark = start_spark_session(cfg.extraction, work)
        figures["startup_s"] = time.perf_counter() - start
    start = time.perf_counter()
    report = extract_logs(sys.argv[1], sys.argv[2], cfg.extraction, cfg.data.catalog_uri)
    figures["seconds"] = time.perf_counter() - start
    figures["peak_rss_mib"] = peak_mib("self")
    if spark is not None:
        jvm = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
        figures["peak_rss_python_mib"] = figures["peak_rss_mib"]
        figures["peak_rss_jvm_mib"] = peak_mib(jvm)
        figures["peak_rss_mib"] += figures["peak_rss_jvm_mib"]
        spark.stop()
figures |= {k: report[k] for k in ("rows_in", "rows_quarantined", "pairs")}
figures["memory_limit"] = cfg.extraction.duckdb_memory_limit if cfg.extraction.engine == "duckdb" else (
    cfg.extraction.spark_driver_memory)
print(json.dumps(figures))
"""


def simulate_base(out: Path, requests: int) -> dict:
    from unisup.config import load_config
    from unisup.data.dataset import load_dataset
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
    glob = {"glob": f"{base}/date=*/*.parquet"}
    source = "read_parquet($glob, hive_partitioning = true)"  # adds the folders' date
    base_rows = con.execute(f"SELECT count(*) FROM {source}", glob).fetchall()[0][0]
    con.execute(
        f"""
        COPY (
          SELECT * REPLACE (event_id || '~' || k AS event_id, request_id || '~' || k AS request_id,
                            user_id || '~' || k AS user_id, session_id || '~' || k AS session_id)
          , k % $files AS part
          FROM {source}, range($copies) t(k) LIMIT $rows
        ) TO $out (FORMAT PARQUET, COMPRESSION ZSTD, PARTITION_BY (date, part))
        """,
        glob | {"files": FILES_PER_DAY, "copies": -(-rows // base_rows), "rows": rows, "out": str(out)},
    )
    con.close()


def _extract_once(logs: Path, out: Path, overrides: tuple[str, ...]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _EXTRACT, str(logs), str(out / "engagement.parquet"), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"extraction of {logs} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def extract(logs: Path, out: Path, overrides: tuple[str, ...] = (), repeats: int | None = None) -> dict:
    """Median seconds and peak RSS of repeated extractions, each in a fresh process."""
    repeats = repeats or int(os.environ.get("BENCH_LOGS_REPEATS", 3))
    out.mkdir(parents=True, exist_ok=True)
    runs = [_extract_once(logs, out, overrides) for _ in range(repeats)]
    figures = dict(runs[0])
    for key in ("seconds", "startup_s", "peak_rss_mib", "peak_rss_python_mib", "peak_rss_jvm_mib"):
        if key in figures:
            figures[key] = round(statistics.median(r[key] for r in runs), 2)
    figures["rows_per_s"] = round(figures["rows_in"] / figures["seconds"], 1)
    figures["seconds_all"] = [round(r["seconds"], 2) for r in runs]
    return figures


def engine_overrides(engine: str) -> tuple[str, ...]:
    cores = os.cpu_count() or 1
    spark = (f"extraction.spark_master=local[{cores}]",) if engine == "spark" else ()
    return (f"extraction.engine={engine}", f"extraction.duckdb_threads={cores}", *spark)


def run() -> dict:
    from bench.harness import machine

    requests = int(os.environ.get("BENCH_LOGS_REQUESTS", 10_000))
    sizes = [int(s) for s in os.environ.get("BENCH_LOGS_SIZES", "1000000,10000000").split(",")]
    engines = os.environ.get("BENCH_LOGS_ENGINES", "duckdb,spark").split(",")
    figures: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        root = Path(tmp)
        figures["simulator"] = simulate_base(root / "base", requests)
        figures["extraction_base"] = extract(root / "base", root / "out-base")
        for size in sizes:
            start = time.perf_counter()
            replicate(root / "base", root / f"logs-{size}", size)
            generated = round(time.perf_counter() - start, 2)
            side_by_side = {}
            for engine in engines:
                repeats = int(os.environ.get("BENCH_LOGS_SPARK_REPEATS", 0)) if engine == "spark" else None
                logs, out = root / f"logs-{size}", root / f"out-{size}-{engine}"
                side_by_side[engine] = extract(logs, out, engine_overrides(engine), repeats)
            if {"duckdb", "spark"} <= set(side_by_side):
                side_by_side["spark_time_ratio"] = round(
                    side_by_side["spark"]["seconds"] / side_by_side["duckdb"]["seconds"], 2
                )
            figures[f"extraction_{size}"] = {"generate_s": generated, **side_by_side}
    return figures


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("logs")
