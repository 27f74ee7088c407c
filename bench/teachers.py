"""Teacher cascade on the sample: throughput in-process vs Triton, cascade cost vs agreement, audit.

- pairs/s of each teacher in this process and through the real tritonserver (gRPC) at
  client concurrency 1, 8 and 32 (client batches of 16 pairs; the server's dynamic
  batcher merges them). Both paths do the same work: pairs sorted by length, forward
  passes of ``teachers.triton_forward_batch_size`` pairs, torch's default thread count
  (in this process, or in the python-backend stub while this process only sends
  requests). Each figure is the median of 3 timed calls over the same pairs, after one
  untimed warm-up call;
- for escalation rules and thresholds, and for the configured rule (the one calibrated on
  validation by default): the share of the test pairs reaching the precise stage and the
  agreement of the cascade's grades with the precise teacher grading every pair;
- the quality audit (teachers, cascade, the features-only baseline and raters vs held-out
  human grades), also written to bench/results/teachers_audit.{json,md}.

Uses the teachers in ``teachers.repository_uri`` (trained first when absent).
"""

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from unisup.config import load_config
from unisup.serving.triton_server import triton_server
from unisup.teachers.audit import format_audit, held_out_scores, quality_audit, write_audit
from unisup.teachers.backends import InProcessBackend, TritonBackend
from unisup.teachers.cascade import EscalationRule, decide
from unisup.teachers.labeling import escalation_rule
from unisup.teachers.stages import stage_item_texts
from unisup.teachers.training import train_teachers

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = (1, 8, 32)
CLIENT_BATCH = 16
PAIRS = {"features": 913, "fast": 913, "precise": 256}
REPEATS = 3


def _throughput(backend, stage: str, queries: list[str], items: list[str]) -> float:
    backend.predict(stage, queries, items)  # warm-up
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        backend.predict(stage, queries, items)
        rates.append(len(queries) / (time.perf_counter() - started))
    return round(float(np.median(rates)), 1)


def _sweep(stage_probs: list[np.ndarray], relevance_threshold: int) -> list[dict]:
    reference = stage_probs[-1].argmax(axis=1)
    rows = []
    settings = [("max_prob", t, 0.0) for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    settings += [("boundary", 0.0, m) for m in (0.1, 0.2, 0.3, 0.4)]
    settings += [("either", t, m) for t, m in ((0.6, 0.2), (0.7, 0.3), (0.8, 0.3))]
    for rule, threshold, margin in settings:
        result = decide(stage_probs, EscalationRule(rule, threshold, margin, relevance_threshold))
        rows.append(
            {
                "rule": rule,
                "max_prob_threshold": threshold,
                "boundary_margin": margin,
                "reach_precise": round(result.pairs_per_stage[-1] / len(reference), 4),
                "agreement_with_precise": round(float(np.mean(result.grades == reference)), 4),
            }
        )
    return rows


def run() -> dict:
    cfg = load_config("local")
    repository = Path(cfg.teachers.repository_uri)
    if not (repository / cfg.teachers.stages[-1].name / "config.pbtxt").exists():
        train_teachers(cfg.teachers, cfg.data, repository, channels_cfg=cfg.channels)
    local = InProcessBackend(repository, batch_size=cfg.teachers.triton_forward_batch_size)
    judgments, names, stage_probs = held_out_scores(cfg, local, "test")
    rule = escalation_rule(cfg, str(repository))
    audit = quality_audit(cfg, local, "test", str(repository))
    RESULTS.mkdir(exist_ok=True)
    write_audit(audit, str(RESULTS / "teachers_audit.json"))
    print(format_audit(audit))

    from unisup.data.dataset import load_dataset

    dataset = load_dataset(cfg.data)
    queries, item_ids = judgments["query"].to_pylist(), judgments["product_id"].to_pylist()
    throughput = {}
    with triton_server(repository, models=names) as server:
        for stage in cfg.teachers.stages:
            texts = stage_item_texts(dataset.catalog, stage, item_ids)
            n = min(PAIRS.get(stage.name, 128), len(queries))
            q, t = queries[:n], [texts[i] for i in item_ids[:n]]
            figures = {"pairs": n, "inprocess": _throughput(local, stage.name, q, t)}
            for c in CONCURRENCY:
                backend = TritonBackend(server.grpc_url, batch_size=CLIENT_BATCH, concurrency=c)
                figures[f"triton_c{c}"] = _throughput(backend, stage.name, q, t)
                backend.close()
            figures["triton_c8_vs_inprocess"] = round(figures["triton_c8"] / figures["inprocess"], 3)
            throughput[stage.name] = figures
    keys = ("exact", "within_one", "qwk", "condensed_ndcg@10")
    stats = lambda a: {k: round(a[k], 4) for k in keys if a.get(k) is not None}  # noqa: E731
    return {
        "pairs_per_s": throughput,
        "cascade_sweep_test_pairs": len(queries),
        "cascade_sweep": _sweep(stage_probs, cfg.data.relevance_threshold),
        "cascade_configured": {
            "rule": asdict(rule),
            "reach_precise": round(audit["cascade"]["reached"][names[-1]] / len(queries), 4),
            "agreement_with_precise": round(audit["cascade"]["agreement_with_last_stage"], 4),
        },
        "audit": {
            **{f"stage_{n}": stats(a) for n, a in audit["stages"].items()},
            "cascade": stats(audit["cascade"]),
            "features_baseline": stats(audit["features_baseline"]),
            "raters_mean": stats(audit["raters"]["mean"]),
            "gate_passed": audit["gate"]["passed"],
        },
    }


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("teachers")
