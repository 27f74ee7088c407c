"""Exit status of ``unisup extract-logs`` over many runs, each in a fresh process.

A run whose outputs are complete must exit 0; a native thread torn down at interpreter
exit shows as 134 (SIGABRT, "terminate called without an active exception"). The logs
are synthetic (``BENCH_EXIT_ROWS`` rows, 300,000 by default, over two days and four
files), with enough (query, item) pairs that the engagement table takes Arrow some
threads to read. The extraction runs ``BENCH_EXIT_RUNS`` times (100 by default); the figures
count the runs by exit status. (The sharded mode it also ran is gone with the sharded extraction.)

Measured with 200 runs per mode on the project machine (2 cores, shared): before the extraction
stopped reading the engagement table back from Python bytes (``read_table`` to get the empty
held-out table's columns), 9 of 400 runs aborted (5 single pass, 4 sharded); after, none.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DAY_US = 86_400 * 10**6
START_US = 1_709_510_400 * 10**6  # 2024-03-04 00:00 UTC
ITEMS, QUERIES, USERS, ROWS_PER_REQUEST = 3000, 500, 5000, 8


def write_logs(root: Path, rows: int, files: int = 4) -> None:
    """Synthetic raw logs under ``root/logs`` (``date=YYYY-MM-DD/part-N.parquet``) and their
    catalog ``root/products.parquet``."""
    from unisup.schemas import RAW_LOGS

    rng = np.random.default_rng(0)
    schema = RAW_LOGS.arrow_schema(["rank_bm25"])
    per_file = rows // files
    for f in range(files):
        day = f * 2 // files
        row = np.arange(per_file) + f * per_file
        request = row // ROWS_PER_REQUEST
        slot = row % ROWS_PER_REQUEST + 1
        shown = slot <= 4
        click = shown & (rng.random(per_file) < 0.1 / slot)
        table = pa.table(
            {
                "event_id": [f"e{r}" for r in row],
                "request_id": [f"r{r}" for r in request],
                "timestamp": pa.array(START_US + day * DAY_US + rng.integers(0, DAY_US, per_file)),
                "user_id": [f"u{r % USERS}" for r in request],
                "session_id": [f"s{r}" for r in request],
                "user_agent": ["Mozilla/5.0"] * per_file,
                "query": [f"query {q}" for q in rng.integers(0, QUERIES, per_file)],
                "item_id": [f"p{i}" for i in rng.integers(0, ITEMS, per_file)],
                "position": pa.array(slot, pa.int16(), mask=~shown),
                "impression": shown,
                "click": click,
                "conversion": click & (rng.random(per_file) < 0.2),
                "price": rng.uniform(1, 100, per_file),
                "bid": rng.uniform(0.1, 1, per_file),
                "rank_bm25": pa.array(rng.integers(1, 50, per_file), pa.int32()),
            }
        )
        path = root / "logs" / f"date=2024-03-0{4 + day}" / f"part-{f}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.cast(schema), path)
    catalog = pa.table({"product_id": [f"p{i}" for i in range(ITEMS)], "title": [f"item {i}" for i in range(ITEMS)]})
    pq.write_table(catalog, root / "products.parquet")


def exit_statuses(root: Path, runs: int, extra: list[str]) -> dict[str, int]:
    """Runs of the CLI extraction by exit status; a failed run's last line of stderr is printed."""
    statuses: collections.Counter = collections.Counter()
    command = [sys.executable, "-m", "unisup.cli", "extract-logs", "--logs", str(root / "logs")]
    command += ["--out", str(root / "out" / "engagement.parquet")]
    command += ["-o", f"data.catalog_uri={root / 'products.parquet'}"]
    for _ in range(runs):
        result = subprocess.run(command + extra, cwd=REPO, capture_output=True, text=True)
        statuses[str(result.returncode)] += 1
        if result.returncode:
            print(f"exit {result.returncode}: {(result.stderr.strip().splitlines() or [''])[-1]}")
    return dict(sorted(statuses.items()))


def run() -> dict:
    runs = int(os.environ.get("BENCH_EXIT_RUNS", 100))
    rows = int(os.environ.get("BENCH_EXIT_ROWS", 300_000))
    with tempfile.TemporaryDirectory(prefix="unisup-exit-") as tmp:
        root = Path(tmp)
        write_logs(root, rows)
        return {
            "runs_per_mode": runs,
            "rows": rows,
            "single_pass": exit_statuses(root, runs, []),
        }
