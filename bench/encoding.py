"""Catalog encoding throughput with the packaged MiniLM (products/s), no cache.

Encodes a fixed, seeded subset of the catalog several times and reports the median.
"""

import statistics
import time

import numpy as np
import torch

from unisup.config import load_config
from unisup.data.catalog import item_texts
from unisup.data.dataset import load_dataset
from unisup.encoders import DenseEncoder

SUBSET = 2048
REPEATS = 3


def run() -> dict:
    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    rows = np.random.default_rng(0).choice(dataset.catalog.num_rows, size=SUBSET, replace=False)
    texts = item_texts(dataset.catalog.take(rows))
    figures = {"products": SUBSET, "repeats": REPEATS, "torch_threads": torch.get_num_threads()}
    for max_length in (32, 64, 128):
        encoder = DenseEncoder(max_length=max_length, batch_size=cfg.channels.dense_batch_size)
        encoder.encode(texts[:64])  # warm-up
        seconds = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            encoder.encode(texts)
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        figures[f"max_length_{max_length}"] = {
            "median_seconds": round(median, 2),
            "products_per_s": round(SUBSET / median, 1),
            "full_catalog_seconds_est": round(dataset.catalog.num_rows / (SUBSET / median), 1),
        }
    return figures


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("encoding")
