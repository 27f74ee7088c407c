"""``make demo``: what exists of the pipeline, end to end on the bundled sample.

Today: load and validate the sample (with the record accounting), build the lexical
and dense retrieval channels over the full catalog, and print their quality on the
test queries of the split.
"""

from __future__ import annotations

import sys
import time

from unisup.baselines import build_channels, evaluate_channels, format_table
from unisup.config import load_config
from unisup.data.sample import load_catalog, load_dataset, load_judgments


def main() -> int:
    cfg = load_config("local")
    start = time.perf_counter()
    print("unisup demo on the bundled Icecat/Chorus sample (see data/sample/ATTRIBUTION.md)\n")
    catalog = load_catalog(cfg.data.catalog_uri)
    judgments = load_judgments(cfg.data.judgments_uri, catalog.accepted, cfg.data.num_grades)
    for result in (catalog, judgments):
        print(f"[1] validated {result.artifact}: rows in {result.rows_in} = accepted {result.accepted.num_rows} + quarantined {result.quarantined.num_rows}")
    dataset = load_dataset(cfg.data)
    print("[1] query split: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.split.items()))
    print("[2] building channels: BM25 (bm25s) and off-the-shelf MiniLM (embeddings cached under "
          f"{cfg.channels.cache_dir}; the first run encodes the catalog, ~2-3 min on 2 cores)")
    channels = build_channels(dataset, cfg.channels)
    qrels = dataset.qrels("test")
    results = evaluate_channels(channels, qrels, k=10, depth=cfg.channels.top_k, relevance_threshold=cfg.data.relevance_threshold)
    print(f"\n[3] {len(qrels)} test queries, retrieval over all {dataset.catalog.num_rows} products:\n")
    print(format_table(results, ["ndcg@10", "condensed_ndcg@10", "judged@10", "grade0_share@10"]))
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
