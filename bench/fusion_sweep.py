"""The fusion weights of the unified target, chosen on the validation queries.

The unified target is ``t = g + a * prior + b * [relevant] * e - c * [not relevant] * prior``
(``unisup.fusion.fused_target``). This benchmark trains the unified student once per setting of
``a`` (``fusion.prior_weight``), ``c`` (``fusion.hard_negative_weight``) and the grade gains, on
the labels and engagement of the newest ``make demo`` run (as ``bench.presets`` does; the same
``BENCH_LABELS`` / ``BENCH_ENGAGEMENT`` overrides), with the local profile's budget and early
stopping. Each student retrieves the **validation** queries over the full catalog; the setting
with the best validation nDCG@10 (ties: the lower grade-0 share) is chosen. Only the chosen
setting and the profile's current one are then scored on the test queries, so the test split
plays no part in the choice. ``BENCH_SWEEP_SEEDS`` (default ``0``; e.g. ``0,1,2``) trains every
setting once per seed and ranks settings by their medians.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from bench.presets import METRICS, demo_outputs, evaluate_biencoder

SEEDS = [int(s) for s in os.environ.get("BENCH_SWEEP_SEEDS", "0").split(",")]
LINEAR_GAINS = "[0.0,1.0,2.0,3.0]"
STEEP_GAINS = "[0.0,1.0,3.0,7.0]"
# (prior_weight a, hard_negative_weight c, grade gains); the profile's setting is the first.
# One axis at a time around it (a, then c), and the steeper gains with and without the prior.
SETTINGS = [
    (0.5, 1.0, LINEAR_GAINS),
    (0.0, 1.0, LINEAR_GAINS),
    (0.25, 1.0, LINEAR_GAINS),
    (1.0, 1.0, LINEAR_GAINS),
    (0.5, 0.0, LINEAR_GAINS),
    (0.5, 2.0, LINEAR_GAINS),
    (0.5, 1.0, STEEP_GAINS),
    (0.0, 1.0, STEEP_GAINS),
]


def setting_name(a: float, c: float, gains: str) -> str:
    return f"a={a:g} c={c:g} gains={'steep' if gains == STEEP_GAINS else 'linear'}"


def overrides(a: float, c: float, gains: str, seed: int) -> list[str]:
    return [
        "fusion.preset=unified",
        f"fusion.prior_weight={a}",
        f"fusion.hard_negative_weight={c}",
        f"fusion.grade_gains={gains}",
        f"training.seed={seed}",
    ]


def train_and_score(labels: str, engagement: str, work: str, setting: tuple, seed: int, split: str) -> dict:
    """Fuse, train and score one setting with one seed on ``split``."""
    from unisup.biencoder.train import train
    from unisup.config import load_config
    from unisup.data.sample import load_dataset
    from unisup.fusion import fuse

    cfg = load_config("local", overrides(*setting, seed))
    fuse(labels, engagement, f"{work}.parquet", None, cfg)
    result = train(f"{work}.parquet", work, cfg, work_dir=f"{work}.work")
    metrics, _ = evaluate_biencoder(work, load_dataset(cfg.data), cfg, split=split)
    return {m: round(metrics[m], 4) for m in METRICS} | {"steps": result.steps, "below_start": result.below_start}


def medians(runs: list[dict]) -> dict:
    return {m: round(float(np.median([r[m] for r in runs])), 4) for m in METRICS} | {
        f"{m}_spread": round(float(np.ptp([r[m] for r in runs])), 4) for m in METRICS
    }


def run() -> dict:
    from bench.harness import machine

    inputs = demo_outputs()
    figures: dict = {"machine": machine(), "seeds": SEEDS, "selection": "validation ndcg@10, then grade-0 share"}
    validation: dict[str, dict] = {}
    models: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fusion-sweep-") as tmp:
        for i, setting in enumerate(SETTINGS):
            name = setting_name(*setting)
            runs = []
            for seed in SEEDS:
                work = f"{tmp}/s{i}_seed{seed}"
                runs.append(train_and_score(inputs["labels"], inputs["engagement"], work, setting, seed, "validation"))
                models.setdefault(name, []).append(work)
            validation[name] = medians(runs) | {"steps": [r["steps"] for r in runs]}
            print(f"{name}: {validation[name]}", flush=True)
        figures["validation"] = validation
        chosen = min(validation, key=lambda n: (-validation[n]["ndcg@10"], validation[n]["grade0_share@10"]))
        current = setting_name(*SETTINGS[0])
        figures["chosen"] = chosen
        figures["current"] = current
        from unisup.config import load_config
        from unisup.data.sample import load_dataset

        cfg = load_config("local")
        dataset = load_dataset(cfg.data)
        for label, name in (("test_current", current), ("test_chosen", chosen)):
            runs = [{m: round(evaluate_biencoder(w, dataset, cfg)[0][m], 4) for m in METRICS} for w in models[name]]
            figures[label] = medians(runs)
    return figures


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("fusion_sweep")
