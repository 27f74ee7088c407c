"""Shared steps of the benchmarks that choose a setting on the validation queries: fuse, train
and score one setting (a list of config overrides) with one seed, and the median and spread of
a setting's seeds. Not a benchmark itself."""

from __future__ import annotations

import numpy as np

from bench.presets import METRICS, evaluate_biencoder


def train_and_score(labels: str, engagement: str, work: str, overrides: list[str], split: str) -> dict:
    """Fuse the labels and engagement, train the student and score it on ``split`` over the full
    catalog, all with the local profile and ``overrides``."""
    from unisup.biencoder.train import train
    from unisup.config import load_config
    from unisup.data.dataset import load_dataset
    from unisup.fusion import fuse

    cfg = load_config("local", overrides)
    fuse(labels, engagement, f"{work}.parquet", None, cfg)
    result = train(f"{work}.parquet", work, cfg, work_dir=f"{work}.work", progress=False)
    metrics, _ = evaluate_biencoder(work, load_dataset(cfg.data), cfg, split=split)
    return {m: round(metrics[m], 4) for m in METRICS} | {"steps": result.steps, "best_step": result.best_step}


def medians(runs: list[dict]) -> dict:
    """Median and spread (max - min) of each metric over a setting's seeds."""
    return {m: round(float(np.median([r[m] for r in runs])), 4) for m in METRICS} | {
        f"{m}_spread": round(float(np.ptp([r[m] for r in runs])), 4) for m in METRICS
    }


def test_medians(models: list[str]) -> dict:
    """Medians and spreads of trained students' metrics on the test queries."""
    from unisup.config import load_config
    from unisup.data.dataset import load_dataset

    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    return medians([{m: round(evaluate_biencoder(w, dataset, cfg)[0][m], 4) for m in METRICS} for w in models])


def run_sweep(settings: dict[str, list[str]], current: str, seeds: list[int]) -> dict:
    """Train every setting once per seed on the newest demo run's labels and engagement, score it
    on the validation queries, choose the best median validation nDCG@10 (ties: the lower grade-0
    share), and only then score the chosen and the ``current`` setting on the test queries."""
    import tempfile

    from bench.harness import machine
    from bench.presets import demo_outputs

    inputs = demo_outputs()
    figures: dict = {"machine": machine(), "seeds": seeds, "selection": "validation ndcg@10, then grade-0 share"}
    validation: dict[str, dict] = {}
    models: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for i, (name, overrides) in enumerate(settings.items()):
            runs = []
            for seed in seeds:
                work = f"{tmp}/s{i}_seed{seed}"
                seeded = [*overrides, f"training.seed={seed}"]
                runs.append(train_and_score(inputs["labels"], inputs["engagement"], work, seeded, "validation"))
                models.setdefault(name, []).append(work)
            validation[name] = medians(runs) | {
                "steps": [r["steps"] for r in runs],
                "best_step": [r["best_step"] for r in runs],
            }
            print(f"{name}: {validation[name]}", flush=True)
        figures["validation"] = validation
        chosen = min(validation, key=lambda n: (-validation[n]["ndcg@10"], validation[n]["grade0_share@10"]))
        figures["chosen"], figures["current"] = chosen, current
        for label, name in (("test_current", current), ("test_chosen", chosen)):
            figures[label] = test_medians(models[name])
    return figures
