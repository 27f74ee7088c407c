"""Every fusion preset trained with the same budget, against BM25 and off-the-shelf MiniLM.

Needs the outputs of the logs and teacher stages on the sample: set ``BENCH_LABELS`` (the
teacher cascade's labels) and ``BENCH_ENGAGEMENT`` (the extracted engagement table).
For each preset: ``unisup.fusion.fuse`` -> ``unisup.biencoder.train.train`` (the
``training`` config of the local profile, ``BENCH_PRESET_STEPS`` steps each), then
retrieval of the test queries over the full catalog, scored against the human grades
(nDCG@10, condensed nDCG@10, judged@10, grade-0 share of the judged top 10).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

PRESET_NAMES = ("unified", "engagement_only", "relevance_only", "unified_no_prior", "unified_no_engagement")
METRICS = ("ndcg@10", "condensed_ndcg@10", "judged@10", "grade0_share@10")
STEPS = int(os.environ.get("BENCH_PRESET_STEPS", "150"))


def evaluate_biencoder(model_dir: str, dataset, cfg, split: str = "test") -> dict[str, float]:
    """Mean metrics of a bi-encoder folder: the split's queries over the full catalog."""
    from unisup.biencoder.tower import load_biencoder
    from unisup.channels import top_k_inner_product
    from unisup.data.catalog import item_texts
    from unisup.metrics import mean_metrics, per_query_metrics

    query_tower, item_tower = load_biencoder(model_dir)
    ids = dataset.catalog["product_id"].to_pylist()
    item_tower.max_length = cfg.training.item_max_length
    items = item_tower.encode(item_texts(dataset.catalog, tuple(cfg.training.item_fields)), batch_size=128, progress=True)
    qrels = dataset.qrels(split)
    queries = sorted(qrels)
    query_tower.max_length = cfg.training.query_max_length
    idx, _ = top_k_inner_product(query_tower.encode(queries), items, 100)
    rankings = {q: [ids[j] for j in row] for q, row in zip(queries, idx)}
    return mean_metrics(per_query_metrics(rankings, qrels, k=10, relevance_threshold=cfg.data.relevance_threshold))


def run() -> dict:
    from bench.harness import machine
    from unisup.baselines import build_channels, evaluate_channels
    from unisup.biencoder.train import train
    from unisup.config import load_config
    from unisup.data.sample import load_dataset
    from unisup.fusion import fuse

    labels, engagement = os.environ.get("BENCH_LABELS"), os.environ.get("BENCH_ENGAGEMENT")
    if not labels or not engagement:
        raise SystemExit("set BENCH_LABELS and BENCH_ENGAGEMENT to the teacher labels and the engagement table of the sample")
    figures: dict = {"machine": machine(), "steps_per_preset": STEPS, "split": "test", "retrieval": "full catalog"}
    with tempfile.TemporaryDirectory(prefix="bench-presets-") as tmp:
        for preset in PRESET_NAMES:
            cfg = load_config("local", [f"fusion.preset={preset}", f"training.max_steps={STEPS}"])
            fuse(labels, engagement, f"{tmp}/{preset}.parquet", None, cfg)
            result = train(f"{tmp}/{preset}.parquet", f"{tmp}/{preset}", cfg, work_dir=f"{tmp}/{preset}.work")
            metrics = evaluate_biencoder(f"{tmp}/{preset}", load_dataset(cfg.data), cfg)
            figures[preset] = {m: round(metrics[m], 4) for m in METRICS} | {"train_seconds": round(result.train_seconds, 1)}
    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    baselines = build_channels(dataset, cfg.channels)
    for result in evaluate_channels({k: baselines[k] for k in ("bm25", "minilm")}, dataset.qrels("test"), k=10,
                                    depth=100, relevance_threshold=cfg.data.relevance_threshold):
        figures[result.name] = {m: round(float(np.nan_to_num(result.metrics[m])), 4) for m in METRICS}
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
