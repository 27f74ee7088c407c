"""The retrieval channels as baselines: BM25, off-the-shelf MiniLM, and their RRF."""

from __future__ import annotations

import time
from dataclasses import dataclass

from unisup.channels import BM25Channel, Channel, DenseChannel, FusedChannel
from unisup.config import ChannelsConfig
from unisup.data.catalog import item_texts
from unisup.data.dataset import Dataset
from unisup.encoders import DenseEncoder
from unisup.metrics import mean_metrics, per_query_metrics


@dataclass
class ChannelResult:
    name: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    search_seconds: float


def build_channels(dataset: Dataset, cfg: ChannelsConfig, progress: bool = True) -> dict[str, Channel]:
    """BM25, dense (packaged MiniLM unless configured) and their RRF over the catalog."""
    ids = dataset.catalog["product_id"].to_pylist()
    texts = item_texts(dataset.catalog)
    bm25 = BM25Channel(ids, texts, k1=cfg.bm25_k1, b=cfg.bm25_b)
    encoder = DenseEncoder(cfg.dense_model or None, max_length=cfg.dense_max_length, batch_size=cfg.dense_batch_size)
    dense = DenseChannel(ids, texts, encoder, cache_dir=cfg.cache_dir, progress=progress)
    dense.name = "minilm"
    return {"bm25": bm25, "minilm": dense, "rrf(bm25,minilm)": FusedChannel([bm25, dense], k=cfg.rrf_k)}


def evaluate_channels(
    channels: dict[str, Channel],
    qrels: dict[str, dict[str, int]],
    k: int = 10,
    depth: int = 100,
    relevance_threshold: int = 2,
) -> list[ChannelResult]:
    """Retrieve ``depth`` items per query with each channel and score the top ``k``."""
    queries = sorted(qrels)
    results = []
    for name, channel in channels.items():
        start = time.perf_counter()
        rankings = channel.search(queries, depth)
        seconds = time.perf_counter() - start
        ranked_ids = {q: [item for item, _ in r] for q, r in zip(queries, rankings)}
        per_query = per_query_metrics(ranked_ids, qrels, k=k, relevance_threshold=relevance_threshold)
        results.append(ChannelResult(name, mean_metrics(per_query), per_query, seconds))
    return results


def format_table(results: list[ChannelResult], columns: list[str]) -> str:
    """A plain-text table: one row per system, one column per metric."""
    width = max(len(r.name) for r in results) + 2
    header = "system".ljust(width) + "".join(c.rjust(20) for c in columns)
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(r.name.ljust(width) + "".join(f"{r.metrics[c]:20.4f}" for c in columns))
    return "\n".join(lines)
