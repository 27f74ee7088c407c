"""Every fusion preset trained with the same budget, against BM25 and off-the-shelf MiniLM.

Reads the outputs of the logs and teacher stages on the sample: by default those of the
newest ``make demo`` run (``runs/demo``); ``BENCH_LABELS`` (the teacher cascade's labels),
``BENCH_ENGAGEMENT`` (the extracted engagement table) and ``BENCH_TEACHERS`` (the teachers'
Triton repository) override them. For each preset: ``unisup.fusion.fuse`` ->
``unisup.biencoder.train.train`` (the ``training`` config of the local profile, at most
``BENCH_PRESET_STEPS`` steps each; 0, the default, keeps the profile's epochs and early
stopping), then retrieval of the test queries over the full catalog, scored against the
human grades (nDCG@10, condensed nDCG@10, judged@10, grade-0 share of the judged top 10).
The upper bound: the teacher cascade reranking the unified model's top 100 (by expected
grade). ``BENCH_PRESET_SEEDS`` (default ``0``, e.g. ``0,1,2``) trains the unified and
engagement-only presets once per training seed and adds the median and spread of each figure.
``BENCH_PRESET_BUSY=1`` keeps the other core busy with a second process for the whole run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

PRESET_NAMES = ("unified", "engagement_only", "relevance_only", "unified_no_prior", "unified_no_engagement")
METRICS = ("ndcg@10", "condensed_ndcg@10", "judged@10", "grade0_share@10")
STEPS = int(os.environ.get("BENCH_PRESET_STEPS", "0"))
SEEDS = [int(s) for s in os.environ.get("BENCH_PRESET_SEEDS", "0").split(",")]
SEEDED = ("unified", "engagement_only")
BUSY = os.environ.get("BENCH_PRESET_BUSY", "0") == "1"
DEMO_ROOT = Path(__file__).resolve().parents[1] / "runs" / "demo"


def demo_outputs() -> dict[str, str]:
    """Labels, engagement and teachers of the newest demo run, unless given by environment."""
    runs = sorted(DEMO_ROOT.glob("unified-supervision-*"), key=lambda p: p.stat().st_mtime)
    found = {}
    if runs:
        run = runs[-1]
        found = {
            "labels": next(run.glob("merge-shards/merged_table"), None),
            "engagement": next(run.glob("extract-logs/engagement"), None),
            "teachers": next(run.glob("train-teacher/teachers"), None),
        }
    out = {}
    for key in ("labels", "engagement", "teachers"):
        value = os.environ.get(f"BENCH_{key.upper()}") or (str(found[key]) if found.get(key) else "")
        if not value:
            raise SystemExit(f"no {key}: run `make demo` first, or set BENCH_{key.upper()}")
        out[key] = value
    return out


def evaluate_biencoder(
    model_dir: str, dataset, cfg, split: str = "test"
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Mean metrics of a bi-encoder folder (the split's queries over the full catalog), and its top-100 rankings."""
    from unisup.biencoder.tower import frozen_item_encoder, item_fields, load_biencoder
    from unisup.data.catalog import item_texts
    from unisup.encoders import top_k_inner_product
    from unisup.metrics import mean_metrics, per_query_metrics

    query_tower, item_tower = load_biencoder(model_dir)
    ids = dataset.catalog["product_id"].to_pylist()
    texts = item_texts(dataset.catalog, item_fields(model_dir))
    frozen = frozen_item_encoder(model_dir, item_tower)  # the start encoder: its cached catalog embeddings
    if frozen is not None:
        items = frozen.catalog_vectors(texts, cfg.channels.cache_dir or None)
    else:
        items = item_tower.encode(texts, batch_size=128, progress=True)
    qrels = dataset.qrels(split)
    queries = sorted(qrels)
    idx, _ = top_k_inner_product(query_tower.encode(queries), items, 100)
    rankings = {q: [ids[j] for j in row] for q, row in zip(queries, idx)}
    return mean_metrics(
        per_query_metrics(rankings, qrels, k=10, relevance_threshold=cfg.data.relevance_threshold)
    ), rankings


def teacher_rerank(rankings: dict[str, list[str]], teachers: str, cfg, work: str) -> dict[str, list[str]]:
    """Each query's candidates reordered by the cascade's expected grade (stable for ties)."""
    import pyarrow as pa

    from unisup.teachers.labeling import label_pairs, make_backend, read_labels

    pairs = pa.table(
        {
            "query": [q for q, items in rankings.items() for _ in items],
            "item_id": [i for items in rankings.values() for i in items],
        }
    )
    label_pairs(pairs, work, cfg, make_backend(cfg, teachers), repository=teachers)
    labels = read_labels(work)
    expected = {
        (q, i): float(np.dot(p, np.arange(len(p))))
        for q, i, p in zip(labels["query"].to_pylist(), labels["item_id"].to_pylist(), labels["probs"].to_pylist())
    }
    return {q: sorted(items, key=lambda i: -expected[(q, i)]) for q, items in rankings.items()}


def run() -> dict:
    from bench.harness import busy_core

    with busy_core(BUSY):
        return _run()


def _run() -> dict:
    from bench.harness import machine
    from unisup.baselines import build_channels, evaluate_channels
    from unisup.biencoder.train import train
    from unisup.config import load_config
    from unisup.data.dataset import load_dataset
    from unisup.fusion import fuse
    from unisup.metrics import mean_metrics, per_query_metrics

    inputs = demo_outputs()
    labels, engagement = inputs["labels"], inputs["engagement"]
    figures: dict = {
        "machine": machine(),
        "steps_per_preset": STEPS,
        "split": "test",
        "retrieval": "full catalog",
        "other_core_busy": BUSY,
    }
    with tempfile.TemporaryDirectory(prefix="bench-presets-") as tmp:
        for preset, seed in [(p, s) for p in PRESET_NAMES for s in (SEEDS if p in SEEDED else SEEDS[:1])]:
            cfg = load_config(
                "local", [f"fusion.preset={preset}", f"training.max_steps={STEPS}", f"training.seed={seed}"]
            )
            name = preset if seed == SEEDS[0] else f"{preset}_seed{seed}"
            fuse(labels, engagement, f"{tmp}/{name}.parquet", None, cfg)
            result = train(f"{tmp}/{name}.parquet", f"{tmp}/{name}", cfg, work_dir=f"{tmp}/{name}.work")
            dataset = load_dataset(cfg.data)
            metrics, rankings = evaluate_biencoder(f"{tmp}/{name}", dataset, cfg)
            figures[name] = {m: round(metrics[m], 4) for m in METRICS} | {
                "train_seconds": round(result.train_seconds, 1),
                "steps": result.steps,
                "below_start": result.below_start,
            }
            if name == "unified":
                reranked = teacher_rerank(rankings, inputs["teachers"], cfg, f"{tmp}/rerank")
                qrels = dataset.qrels("test")
                rerank = mean_metrics(
                    per_query_metrics(reranked, qrels, k=10, relevance_threshold=cfg.data.relevance_threshold)
                )
                figures["teacher_rerank_of_unified_top100"] = {m: round(rerank[m], 4) for m in METRICS}
    if len(SEEDS) > 1:
        for preset in SEEDED:
            runs = [figures[preset if s == SEEDS[0] else f"{preset}_seed{s}"] for s in SEEDS]
            figures[f"{preset}_over_seeds"] = {
                m: {
                    "median": round(float(np.median([r[m] for r in runs])), 4),
                    "spread": round(float(np.ptp([r[m] for r in runs])), 4),
                }
                for m in METRICS
            }
    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    baselines = build_channels(dataset, cfg.channels)
    for result in evaluate_channels(
        {k: baselines[k] for k in ("bm25", "minilm")},
        dataset.qrels("test"),
        k=10,
        depth=100,
        relevance_threshold=cfg.data.relevance_threshold,
    ):
        figures[result.name] = {m: round(float(np.nan_to_num(result.metrics[m])), 4) for m in METRICS}
    return figures


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("presets")
