"""Bi-encoder training throughput with the packaged MiniLM: query lists/s and items/s.

Lists are derived from the sample: each training query's human-judged items (grades as
targets) plus random catalog items, in the training-lists schema. The run is
``unisup.biencoder.train.train_biencoder`` with the local profile's ``training`` config
(by default the query tower against the frozen item tower's cached catalog embeddings;
listwise softmax CE with in-batch negatives, ``lists_per_batch`` x ``items_per_list``
items, the configured item texts) for ``BENCH_TRAINING_STEPS`` steps; throughput counts
optimizer steps only (forward, backward, update), not the catalog embedding (cached) or
the validations, which are timed together apart.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

STEPS = int(os.environ.get("BENCH_TRAINING_STEPS", "100"))
RANDOM_PER_LIST = 8


def sample_lists(dataset, seed: int = 0) -> pa.Table:
    """Training lists of the sample's train queries: judged items + random negatives."""
    from unisup.schemas import TRAINING_LISTS

    rng = np.random.default_rng(seed)
    catalog = np.asarray(dataset.catalog["product_id"].to_pylist(), dtype=object)
    rows = []
    for query, grades in sorted(dataset.qrels("train").items()):
        for item, grade in sorted(grades.items()):
            rows.append((query, item, float(grade), grade, "teacher"))
        for item in rng.choice(catalog, size=RANDOM_PER_LIST, replace=False):
            if item not in grades:
                rows.append((query, str(item), 0.0, None, "random"))
    query, item, target, grade, source = zip(*rows)
    n = len(rows)
    return pa.table(
        {
            "query": query,
            "item_id": item,
            "target": pa.array(target, pa.float32()),
            "grade": pa.array(grade, pa.int8()),
            "prior": pa.array(np.zeros(n), pa.float32()),
            "engagement": pa.array(np.zeros(n), pa.float32()),
            "clicked": [False] * n,
            "converted": [False] * n,
            "source": source,
        },
        schema=TRAINING_LISTS.arrow_schema(),
    )


def run() -> dict:
    import torch

    from bench.harness import machine
    from unisup.biencoder.train import train_biencoder
    from unisup.config import load_config
    from unisup.data.dataset import load_dataset

    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    lists = sample_lists(dataset)
    training = dataclasses.replace(cfg.training, max_steps=STEPS, validation_distractors=0, checkpoint_every=10_000)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        started = time.perf_counter()
        result = train_biencoder(
            lists,
            dataset.catalog,
            dataset.qrels("validation"),
            training,
            f"{tmp}/model",
            relevance_threshold=cfg.data.relevance_threshold,
            progress=False,
            embedding_cache_dir=cfg.channels.cache_dir,
            embedding_batch_size=cfg.channels.dense_batch_size,
        )
        wall = time.perf_counter() - started
    seconds_per_step = result.train_seconds / result.steps
    return {
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "model": "packaged all-MiniLM-L6-v2, "
        + ("query tower, frozen item tower (cached)" if training.freeze_item_tower else "shared towers"),
        "steps": result.steps,
        "lists_per_batch": training.lists_per_batch,
        "items_per_list": training.items_per_list,
        "query_max_length": training.query_max_length,
        "item_max_length": training.item_max_length,
        "loss": training.loss,
        "in_batch_negatives": training.in_batch_negatives,
        "train_lists": int(lists.num_rows and len(set(lists["query"].to_pylist()))),
        "lists_per_second": round(result.lists_per_second, 3),
        "items_per_second": round(result.items_per_second, 2),
        "seconds_per_step": round(seconds_per_step, 3),
        "steps_in_3_minutes": int(180 / seconds_per_step),
        "outside_steps_seconds": round(wall - result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
