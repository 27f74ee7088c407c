"""Fine-tuning the ordinal teachers on human judgments, calibration, and export.

Each configured stage is trained on the training split's judgments (class-weighted
cumulative binary cross-entropy, so rare grades count), early-stopped on the
validation split's negative log-likelihood, then temperature-scaled on the
validation split, and finally exported into a Triton model repository.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from scipy.optimize import minimize_scalar

from unisup.config import DataConfig, TeachersConfig, TeacherStageConfig
from unisup.data.catalog import item_texts
from unisup.data.sample import Dataset, load_dataset
from unisup.teachers.export import export_repository
from unisup.teachers.model import OrdinalCrossEncoder, grade_probabilities

log = logging.getLogger(__name__)


def stage_item_texts(catalog: pa.Table, stage: TeacherStageConfig, item_ids: list[str] | None = None) -> dict[str, str]:
    """{item_id: text the stage reads} for the catalog rows (or only ``item_ids``)."""
    if item_ids is not None:
        import pyarrow.compute as pc

        catalog = catalog.filter(
            pc.is_in(catalog["product_id"], value_set=pa.array(sorted(set(item_ids)), pa.string()))
        )
    texts = item_texts(catalog, fields=tuple(stage.item_fields), attributes=stage.attributes)
    return dict(zip(catalog["product_id"].to_pylist(), texts))


def judged_pairs(dataset: Dataset, split: str, texts: dict[str, str], limit: int = 0, seed: int = 0):
    """(queries, item texts, grades) of one split's judgments, optionally subsampled."""
    table = dataset.judgments_for(split).select(["query", "product_id", "rating"])
    rows = table.to_pylist()
    if limit and len(rows) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
        rows = [rows[i] for i in keep]
    return (
        [r["query"] for r in rows],
        [texts[r["product_id"]] for r in rows],
        np.array([int(r["rating"]) for r in rows], dtype=np.int64),
    )


def class_weights(grades: np.ndarray, num_grades: int, power: float) -> np.ndarray:
    """Per-grade weights (N / (K * count))^power, normalized to mean 1 over the examples."""
    counts = np.bincount(grades, minlength=num_grades).astype(np.float64)
    weights = np.where(counts > 0, (len(grades) / (num_grades * np.maximum(counts, 1))) ** power, 0.0)
    return weights / (weights[grades].mean() if len(grades) else 1.0)


def ordinal_loss(cumulative_logits: torch.Tensor, grades: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy of the K-1 cumulative targets [grade > k]."""
    ks = torch.arange(cumulative_logits.shape[1], device=grades.device)
    targets = (grades[:, None] > ks[None, :]).float()
    per_pair = torch.nn.functional.binary_cross_entropy_with_logits(cumulative_logits, targets, reduction="none").sum(1)
    return (per_pair * weights).sum() / weights.sum()


def nll(cumulative_logits: np.ndarray, grades: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the grades under the per-grade probabilities."""
    probs = grade_probabilities(torch.from_numpy(cumulative_logits), temperature).numpy()
    return float(-np.log(np.clip(probs[np.arange(len(grades)), grades], 1e-9, None)).mean())


def fit_temperature(cumulative_logits: np.ndarray, grades: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimizing the validation NLL (temperature scaling)."""
    result = minimize_scalar(
        lambda log_t: nll(cumulative_logits, grades, math.exp(log_t)),
        bounds=(math.log(0.05), math.log(20.0)),
        method="bounded",
    )
    return float(math.exp(result.x))


def train_stage(
    stage: TeacherStageConfig, cfg: TeachersConfig, dataset: Dataset, num_grades: int, out_dir: str | Path
) -> dict:
    """Fine-tune, early-stop, calibrate and save one teacher; returns its training record."""
    from tqdm.auto import tqdm

    from unisup.channels import packaged_minilm_path

    started = time.perf_counter()
    texts = stage_item_texts(dataset.catalog, stage)
    train_q, train_t, train_y = judged_pairs(dataset, "train", texts, cfg.max_train_pairs, cfg.seed)
    val_q, val_t, val_y = judged_pairs(dataset, "validation", texts, cfg.max_validation_pairs, cfg.seed)
    if len(train_y) == 0 or len(val_y) == 0:
        raise ValueError(
            f"stage {stage.name}: the training and validation splits need judged pairs "
            f"(got {len(train_y)} and {len(val_y)})"
        )
    teacher = OrdinalCrossEncoder.from_encoder(
        stage.base_model or packaged_minilm_path(),
        num_grades,
        stage.max_length,
        stage.num_layers,
        stage.item_fields,
        stage.attributes,
        cfg.seed,
    )
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.freeze_embeddings:
        teacher.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    weights = class_weights(train_y, num_grades, cfg.class_weight_power)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in teacher.encoder.parameters() if p.requires_grad], "lr": stage.learning_rate},
            {"params": teacher.head.parameters(), "lr": cfg.head_learning_rate},
        ],
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_y) / stage.batch_size)
    total_steps = stage.epochs * steps_per_epoch
    if stage.max_steps:
        total_steps = min(total_steps, stage.max_steps)
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    rng = np.random.default_rng(cfg.seed)
    best = {"nll": math.inf, "state": None, "epoch": 0}
    history, step, bad_epochs, stop_reason = [], 0, 0, "epochs"
    teacher.train()
    for epoch in range(1, stage.epochs + 1):
        order = rng.permutation(len(train_y))
        losses = []
        for start in tqdm(
            range(0, len(order), stage.batch_size), desc=f"{stage.name} epoch {epoch}", unit="batch", leave=False
        ):
            idx = order[start : start + stage.batch_size]
            batch = teacher.tokenize([train_q[i] for i in idx], [train_t[i] for i in idx])
            loss = ordinal_loss(
                teacher(**batch), torch.from_numpy(train_y[idx]), torch.from_numpy(weights[train_y[idx]]).float()
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if step >= total_steps:
                stop_reason = "max_steps"
                break
            if stage.max_seconds and time.perf_counter() - started > stage.max_seconds:
                stop_reason = "max_seconds"
                break
        val_nll = nll(teacher.cumulative_logits(val_q, val_t), val_y)
        history.append({"epoch": epoch, "steps": step, "train_loss": float(np.mean(losses)), "validation_nll": val_nll})
        log.info("stage %s epoch %d: train loss %.4f, validation nll %.4f", stage.name, epoch, np.mean(losses), val_nll)
        if val_nll < best["nll"]:
            best = {"nll": val_nll, "state": copy.deepcopy(teacher.state_dict()), "epoch": epoch}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if stop_reason != "epochs":
            break
        if bad_epochs >= stage.patience:
            stop_reason = "early_stopping"
            break
    teacher.load_state_dict(best["state"])
    val_logits = teacher.cumulative_logits(val_q, val_t)
    teacher.temperature = fit_temperature(val_logits, val_y)
    record = {
        "stage": asdict(stage),
        "train_pairs": int(len(train_y)),
        "validation_pairs": int(len(val_y)),
        "class_weights": weights.round(4).tolist(),
        "class_weight_power": cfg.class_weight_power,
        "freeze_embeddings": cfg.freeze_embeddings,
        "torch_threads": torch.get_num_threads(),
        "steps": step,
        "best_epoch": best["epoch"],
        "stop_reason": stop_reason,
        "history": history,
        "validation_nll_uncalibrated": nll(val_logits, val_y),
        "validation_nll_calibrated": nll(val_logits, val_y, teacher.temperature),
        "temperature": teacher.temperature,
        "seconds": round(time.perf_counter() - started, 2),
    }
    teacher.record = record
    teacher.save(out_dir)
    return record


def train_teachers(cfg: TeachersConfig, data_cfg: DataConfig, out_dir: str | Path) -> dict:
    """Train every trainable stage and export all of them into a Triton repository at ``out_dir``.

    Stages of kind ``served`` are not trained here: their model must already be in the
    repository (e.g. an LLM judge). Returns {"stages": {name: record}, "repository": ...}.
    """
    import tempfile

    dataset = load_dataset(data_cfg)
    records = {}
    with tempfile.TemporaryDirectory(prefix="unisup-teachers-") as tmp:
        folders = {}
        for stage in cfg.stages:
            if stage.kind == "served":
                continue
            folders[stage.name] = Path(tmp) / stage.name
            records[stage.name] = train_stage(stage, cfg, dataset, data_cfg.num_grades, folders[stage.name])
        export_repository(folders, out_dir, cfg, data_cfg.num_grades)
    return {
        "repository": str(out_dir),
        "stages": records,
        "num_grades": data_cfg.num_grades,
        "seconds": round(sum(r["seconds"] for r in records.values()), 2),
    }
