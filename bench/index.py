"""FAISS build time and QPS against recall: Flat, HNSW32 and IVF-PQ.

Two vector sets: the sample catalog's real embeddings (off-the-shelf MiniLM, cached by
``unisup.encoders.cached_encode``), queried with the sample's judged queries; and a
larger set derived from them (``BENCH_INDEX_SIZE`` vectors, 1M by default): the real
vectors plus noise-perturbed, re-normalized copies, to show how cost grows with the
catalog. Recall@10 is against exact (Flat) search; QPS is for one batch of every
query on all threads (``faiss.omp_get_max_threads()``). IVF-PQ is built as
``IVF<n>,PQ48np`` (IVF256 on the sample, IVF1024 on the large set, trained on at most 64
vectors per list): without ``np`` the factory also trains polysemous codes, which took
~200 s on the sample alone (2 cores) and only serve Hamming-thresholded search.
"""

from __future__ import annotations

import os
import time

import numpy as np

NOISE = 0.5  # norm of the perturbation relative to the unit vector: cos(copy, original) ~ 0.9
HNSW_EF_SEARCH = (16, 32, 64, 128, 256)
IVF_NPROBE = (1, 4, 16, 64)
MIN_TIMED_SECONDS = 0.3


def _embeddings() -> tuple[np.ndarray, np.ndarray]:
    from unisup.config import load_config
    from unisup.data.catalog import item_texts
    from unisup.data.dataset import load_dataset
    from unisup.encoders import DenseEncoder, cached_encode

    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    encoder = DenseEncoder(max_length=cfg.channels.dense_max_length, batch_size=cfg.channels.dense_batch_size)
    items = cached_encode(encoder, item_texts(dataset.catalog), cfg.channels.cache_dir, progress=True)
    queries = encoder.encode(sorted(set(dataset.judgments["query"].to_pylist())))
    return items, queries


def derive(items: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """The real vectors followed by noise-perturbed, unit-normalized copies up to ``size`` rows."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, items.shape[1]), dtype=np.float32)
    out[: len(items)] = items
    for start in range(len(items), size, len(items)):
        stop = min(size, start + len(items))
        base = items[: stop - start]
        noisy = base + rng.standard_normal(base.shape, dtype=np.float32) * (NOISE / np.sqrt(items.shape[1]))
        out[start:stop] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return out


def _qps(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    runs, elapsed, ids = 0, 0.0, None
    while elapsed < MIN_TIMED_SECONDS:
        start = time.perf_counter()
        ids = index.search(queries, k)[1]
        elapsed += time.perf_counter() - start
        runs += 1
    return len(queries) * runs / elapsed, ids


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact, strict=True)]))


def _curves(vectors: np.ndarray, queries: np.ndarray, ivf_lists: int) -> dict:
    import faiss

    from unisup.index import build_faiss_index

    k = 10
    out: dict = {"vectors": int(len(vectors)), "queries": int(len(queries))}
    start = time.perf_counter()
    flat, _ = build_faiss_index(vectors, "Flat", "inner_product", train_size=0, use_gpu=False)
    out["flat_build_s"] = round(time.perf_counter() - start, 3)
    qps, exact = _qps(flat, queries, k)
    out["flat_qps"] = round(qps, 1)
    out["flat_recall@10"] = 1.0
    del flat
    for name, factory, knob, values in (
        ("hnsw32", "HNSW32", "efSearch", HNSW_EF_SEARCH),
        (f"ivf{ivf_lists}_pq48", f"IVF{ivf_lists},PQ48np", "nprobe", IVF_NPROBE),
    ):
        start = time.perf_counter()
        index, _ = build_faiss_index(
            vectors, factory, "inner_product", train_size=min(len(vectors), 64 * ivf_lists), use_gpu=False
        )
        out[f"{name}_build_s"] = round(time.perf_counter() - start, 3)
        for value in values:
            faiss.ParameterSpace().set_index_parameters(index, f"{knob}={value}")
            qps, found = _qps(index, queries, k)
            out[f"{name}_{knob}{value}_qps"] = round(qps, 1)
            out[f"{name}_{knob}{value}_recall@10"] = round(_recall(found, exact, k), 4)
        del index
    return out


def run() -> dict:
    import faiss

    from bench.harness import machine

    items, queries = _embeddings()
    size = int(os.environ.get("BENCH_INDEX_SIZE", 1_000_000))
    figures = {"machine": machine(), "faiss_threads": faiss.omp_get_max_threads(), "noise": NOISE}
    figures["sample"] = _curves(items, queries, ivf_lists=256)
    figures[f"derived_{size}"] = _curves(derive(items, size), queries, ivf_lists=1024)
    return figures


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("index")
