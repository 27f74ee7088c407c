"""Channel quality on the sample's test queries: BM25, off-the-shelf MiniLM, their RRF.

Retrieval over the full catalog; nDCG@10 (unjudged = 0), condensed nDCG@10 (judged
products only), judged@10, and the share of grade-0 products among the judged top 10.
"""

from unisup.baselines import build_channels, evaluate_channels
from unisup.config import load_config
from unisup.data.dataset import load_dataset


def run() -> dict:
    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    qrels = dataset.qrels("test")
    channels = build_channels(dataset, cfg.channels, progress=False)
    results = evaluate_channels(
        channels, qrels, k=10, depth=cfg.channels.top_k, relevance_threshold=cfg.data.relevance_threshold
    )
    figures = {"test_queries": len(qrels), "products": dataset.catalog.num_rows}
    for r in results:
        figures[r.name] = {
            **{m: round(v, 4) for m, v in r.metrics.items() if m.endswith("@10")},
            "queries_per_s": round(len(qrels) / r.search_seconds, 1),
        }
    return figures


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("channels")
