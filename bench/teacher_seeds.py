"""Teacher quality across seeds, on an idle and on a busy machine.

Trains the teachers of the ``local`` profile once per seed (``BENCH_TEACHER_SEEDS``,
default ``0,1,2``) and audits each on the test split's judged pairs against the human
grades and the features-only baseline the audit computes. Then trains seed 0 again
while a second process keeps the other core busy (``BENCH_TEACHER_BUSY=0`` skips it):
budgets are epochs and steps, so the busy run must give the same teachers, only later.

Prints, per labeler, QWK and condensed nDCG@10 for every seed with the median and the
spread (max - min), the audit gate of each run, training seconds, and the largest
difference in per-grade probabilities between the idle and the busy run of seed 0.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bench.harness import busy_core
from unisup.config import load_config
from unisup.teachers.audit import held_out_scores, quality_audit
from unisup.teachers.backends import InProcessBackend
from unisup.teachers.training import train_teachers

WORK = Path(".cache") / "bench" / "teacher_seeds"
METRICS = ("qwk", "condensed_ndcg@10")


def _train_and_audit(seed: int, folder: Path, busy: bool) -> tuple[dict, dict, list[np.ndarray]]:
    cfg = load_config("local", [f"teachers.seed={seed}"])
    with busy_core(busy):
        started = time.perf_counter()
        report = train_teachers(cfg.teachers, cfg.data, folder, channels_cfg=cfg.channels)
        seconds = time.perf_counter() - started
    backend = InProcessBackend(folder, cfg.labeling.batch_size)
    audit = quality_audit(cfg, backend, repository=str(folder))
    _, _, stage_probs = held_out_scores(cfg, backend)
    steps = {name: r["steps"] for name, r in report["stages"].items()}
    return audit, {"seconds": round(seconds, 1), "steps": steps}, stage_probs


def _row(audit: dict) -> dict:
    labelers = {f"stage_{n}": a for n, a in audit["stages"].items()}
    labelers.update({"cascade": audit["cascade"], "features_baseline": audit["features_baseline"]})
    return {who: {m: round(a[m], 4) for m in METRICS} for who, a in labelers.items()}


def run() -> dict:
    seeds = [int(s) for s in os.environ.get("BENCH_TEACHER_SEEDS", "0,1,2").split(",")]
    runs, probs = {}, {}
    for seed in seeds:
        audit, meta, stage_probs = _train_and_audit(seed, WORK / f"seed{seed}", busy=False)
        runs[f"seed{seed}"] = {**_row(audit), **meta, "audit_passed": audit["gate"]["passed"]}
        probs[seed] = stage_probs
        print(f"seed {seed}: {runs[f'seed{seed}']}", flush=True)
    summary = {}
    for who in _row(audit):
        for metric in METRICS:
            values = [runs[f"seed{s}"][who][metric] for s in seeds]
            summary[f"{who}.{metric}"] = {
                "median": round(float(np.median(values)), 4),
                "spread": round(float(np.ptp(values)), 4),
            }
    out = {"seeds": seeds, "runs": runs, "summary": summary}
    if os.environ.get("BENCH_TEACHER_BUSY", "1") != "0":
        seed = seeds[0]
        audit, meta, stage_probs = _train_and_audit(seed, WORK / f"seed{seed}-busy", busy=True)
        difference = max(float(np.abs(a - b).max()) for a, b in zip(stage_probs, probs[seed]))
        out["busy_seed"] = {
            **_row(audit),
            **meta,
            "audit_passed": audit["gate"]["passed"],
            "max_probability_difference_vs_idle": round(difference, 6),
        }
    return out


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("teacher_seeds")
