"""The item adapter of the frozen item tower, chosen on the validation queries.

``training.item_adapter`` trains a square projection, the identity at the start, over the frozen
start encoder's cached item embeddings, beside the query tower; the index applies it to the
cached catalog, so the catalog is still embedded once. This benchmark trains the unified student
without it and with it at three adapter learning rates (``training.adapter_learning_rate``),
each once per seed (``BENCH_SWEEP_SEEDS``, default ``0,1,2``), on the labels and engagement of
the newest ``make demo`` run with the local profile's budget and early stopping; it chooses on
the validation queries as ``bench.fusion_sweep`` does, then scores the chosen setting and the
one without an adapter on the test queries.
"""

from __future__ import annotations

import os

from bench.sweeps import run_sweep

SEEDS = [int(s) for s in os.environ.get("BENCH_SWEEP_SEEDS", "0,1,2").split(",")]
NO_ADAPTER = "no adapter"
UNIFIED = ["fusion.preset=unified"]
SETTINGS = {
    NO_ADAPTER: [*UNIFIED, "training.item_adapter=false"],
    **{
        f"adapter lr={lr}": [*UNIFIED, "training.item_adapter=true", f"training.adapter_learning_rate={lr}"]
        for lr in ("1e-3", "3e-3", "1e-2")
    },
}


def run() -> dict:
    return run_sweep(SETTINGS, NO_ADAPTER, SEEDS)


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("item_adapter")
