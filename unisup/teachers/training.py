"""Fine-tuning the ordinal teachers on human judgments, distillation, calibration, and export.

Each configured stage is trained on the training split's judgments (class-weighted
cumulative binary cross-entropy, so rare grades count), early-stopped on the
validation split's negative log-likelihood, then temperature-scaled on the
validation split, and finally exported into a Triton model repository.

A stage with ``distill_from`` imitates a later stage instead: it is trained after
that stage, on the per-grade probabilities the later stage gives to the training
judged pairs plus unlabeled BM25 candidates of the training queries (KL divergence,
mixed with the ordinal loss on the human grades), and early-stopped on the KL
divergence to the later stage on the validation pairs. The later stage is queried
through a :class:`~unisup.teachers.backends.Backend`, so it may be any model.

A stage of kind ``ordinal_features`` is an ordinal model over cheap evidence
(:mod:`unisup.teachers.features`), fitted in seconds; a cross-encoder with
``stack_on`` starts as such a stage and adds what its encoder reads. Its starting
point counts as a candidate on validation, and its epochs are chosen by the audit's own
figures (validation QWK + condensed nDCG@10), so fine-tuning is kept only where it grades
and ranks the validation pairs better than the features alone. Every budget is in epochs, steps or
iterations, seeded; ``max_seconds`` is a safety net whose cut the record names.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from scipy.optimize import minimize_scalar

from unisup import storage
from unisup.config import ChannelsConfig, Config, ConfigError, DataConfig, TeachersConfig, TeacherStageConfig
from unisup.data.catalog import item_texts
from unisup.data.dataset import Dataset, load_dataset
from unisup.errors import InputError
from unisup.schedules import warmup_linear_decay
from unisup.teachers.agreement import agreement, condensed_ndcg
from unisup.teachers.audit import quality_audit
from unisup.teachers.backends import Backend, InProcessBackend
from unisup.teachers.cascade import ESCALATION_FILE, calibrate_escalation
from unisup.teachers.export import export_repository, write_model_card
from unisup.teachers.features import FeatureTeacher, PairFeaturizer, featurizer_for
from unisup.teachers.model import OrdinalCrossEncoder
from unisup.teachers.ordinal import grade_probabilities, ordinal_loss
from unisup.teachers.stages import FEATURES_KIND, KINDS, stage_item_texts

log = logging.getLogger(__name__)

EPS = 1e-7


def judged_pairs(dataset: Dataset, split: str, limit: int = 0, seed: int = 0):
    """(queries, item ids, grades) of one split's judgments, optionally subsampled."""
    table = dataset.judgments_for(split).select(["query", "product_id", "rating"])
    rows = table.to_pylist()
    if limit and len(rows) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
        rows = [rows[i] for i in keep]
    return (
        [r["query"] for r in rows],
        [r["product_id"] for r in rows],
        np.array([int(r["rating"]) for r in rows], dtype=np.int64),
    )


def candidate_pairs(dataset: Dataset, queries: list[str], k: int, exclude: set[tuple[str, str]]):
    """(queries, item ids) of the BM25 top-``k`` catalog items of each query, minus ``exclude``."""
    from unisup.channels import BM25Channel

    if k <= 0 or not queries:
        return [], []
    channel = BM25Channel(dataset.catalog["product_id"].to_pylist(), item_texts(dataset.catalog))
    out_q, out_i = [], []
    for query, ranking in zip(queries, channel.search(queries, k)):
        for item, _ in ranking:
            if (query, item) not in exclude:
                out_q.append(query)
                out_i.append(item)
    return out_q, out_i


def class_weights(grades: np.ndarray, num_grades: int, power: float) -> np.ndarray:
    """Per-grade weights (N / (K * count))^power, normalized to mean 1 over the examples."""
    counts = np.bincount(grades, minlength=num_grades).astype(np.float64)
    weights = np.where(counts > 0, (len(grades) / (num_grades * np.maximum(counts, 1))) ** power, 0.0)
    return weights / (weights[grades].mean() if len(grades) else 1.0)


def distillation_loss(cumulative_logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean KL(target || student) of the per-grade probabilities over the pairs."""
    log_student = torch.log(grade_probabilities(cumulative_logits).clamp_min(EPS))
    log_target = torch.log(target_probs.clamp_min(EPS))
    return (target_probs * (log_target - log_student)).sum(1).mean()


def kl_to_targets(cumulative_logits: np.ndarray, target_probs: np.ndarray) -> float:
    """Mean KL(target || student) on numpy arrays (validation of a distilled stage)."""
    return float(distillation_loss(torch.from_numpy(cumulative_logits), torch.from_numpy(target_probs)))


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


@dataclass
class SoftTargets:
    """A later stage's per-grade probabilities on the pairs a distilled stage trains on."""

    source: str
    queries: list[str]
    items: list[str]
    grades: np.ndarray  # human grade, -1 where unlabeled
    probs: np.ndarray  # (n, K)
    validation_probs: np.ndarray  # (n_validation, K), on the validation judged pairs
    seconds: float


class TrainedStages(InProcessBackend):
    """In-process backend over freshly trained stage folders; other stages through ``fallback``."""

    name = "trained"

    def __init__(self, folders: dict[str, Path], fallback: Backend | None = None, batch_size: int = 64):
        super().__init__(".", batch_size)
        self.folders = folders
        self.fallback = fallback

    def teacher_dir(self, stage: str) -> Path:
        return self.folders[stage]

    def predict(self, stage: str, queries, items) -> np.ndarray:
        if stage in self.folders:
            return super().predict(stage, queries, items)
        if self.fallback is None:
            raise ValueError(f"stage {stage!r} is not trained here and no backend serves it")
        return self.fallback.predict(stage, queries, items)


def soft_targets(source: TeacherStageConfig, cfg: TeachersConfig, dataset: Dataset, backend: Backend) -> SoftTargets:
    """``source``'s probabilities on the training judged pairs + BM25 candidates of the training queries,
    and on the validation judged pairs."""
    started = time.perf_counter()
    queries, items, grades = judged_pairs(dataset, "train", cfg.max_train_pairs, cfg.seed)
    extra_q, extra_i = candidate_pairs(dataset, sorted(set(queries)), cfg.distill_candidates, set(zip(queries, items)))
    val_q, val_i, _ = judged_pairs(dataset, "validation", cfg.max_validation_pairs, cfg.seed)
    queries, items = queries + extra_q, items + extra_i
    texts = stage_item_texts(dataset.catalog, source, items + val_i)
    probs = backend.predict(source.name, queries, [texts[i] for i in items])
    validation_probs = backend.predict(source.name, val_q, [texts[i] for i in val_i])
    return SoftTargets(
        source.name,
        queries,
        items,
        np.concatenate([grades, np.full(len(extra_q), -1, dtype=np.int64)]),
        np.asarray(probs, dtype=np.float32),
        np.asarray(validation_probs, dtype=np.float32),
        round(time.perf_counter() - started, 2),
    )


@dataclass
class StagePairs:
    """The pairs a stage trains and is validated on, as its teacher reads them."""

    train_queries: list[str]
    train_texts: list[str]
    train_grades: np.ndarray  # human grade, -1 where unlabeled (a distilled stage's candidates)
    val_queries: list[str]
    val_items: list[str]
    val_texts: list[str]
    val_grades: np.ndarray
    train_features: np.ndarray | None = None  # the pairs' features, for a stacked teacher
    val_features: np.ndarray | None = None

    @property
    def labeled(self) -> np.ndarray:
        return self.train_grades >= 0


def stage_pairs(
    stage: TeacherStageConfig, cfg: TeachersConfig, dataset: Dataset, targets: SoftTargets | None
) -> StagePairs:
    """The training pairs (the judged ones, or those of the distillation ``targets``) and the
    validation judged pairs of a stage, with the item texts it reads."""
    texts = stage_item_texts(dataset.catalog, stage)
    if targets is None:
        train_q, train_i, train_y = judged_pairs(dataset, "train", cfg.max_train_pairs, cfg.seed)
    else:
        train_q, train_i, train_y = targets.queries, targets.items, targets.grades
    val_q, val_i, val_y = judged_pairs(dataset, "validation", cfg.max_validation_pairs, cfg.seed)
    pairs = StagePairs(train_q, [texts[i] for i in train_i], train_y, val_q, val_i, [texts[i] for i in val_i], val_y)
    if not pairs.labeled.any() or len(val_y) == 0:
        raise InputError(
            f"stage {stage.name}: the training and validation splits need judged pairs "
            f"(got {int(pairs.labeled.sum())} and {len(val_y)})"
        )
    return pairs


def stacked_pairs(teacher: OrdinalCrossEncoder, pairs: StagePairs) -> StagePairs:
    """The pairs as a stacked teacher reads them: the records' features, and the texts it builds from them."""
    return replace(
        pairs,
        train_features=teacher.pair_features(pairs.train_queries, pairs.train_texts),
        val_features=teacher.pair_features(pairs.val_queries, pairs.val_texts),
        train_texts=[teacher.item_text(t) for t in pairs.train_texts],
        val_texts=[teacher.item_text(t) for t in pairs.val_texts],
    )


class StageObjective:
    """What a stage minimizes: per batch, the class-weighted ordinal loss on the human grades, or the
    distillation loss mixed with it; on validation, the NLL, the KL to the distilled stage, or for a
    stacked stage minus the audit's figures."""

    def __init__(
        self,
        stage: TeacherStageConfig,
        pairs: StagePairs,
        weights: np.ndarray,
        num_grades: int,
        targets: SoftTargets | None,
        stacked: bool,
    ):
        self.stage, self.pairs, self.num_grades, self.targets, self.stacked = stage, pairs, num_grades, targets, stacked
        grades = np.maximum(pairs.train_grades, 0)
        self.pair_weights = torch.from_numpy(np.where(pairs.labeled, weights[grades], 0.0)).float()
        self.grades = torch.from_numpy(grades)
        self.criterion = "validation_kl" if targets is not None else "validation_nll"
        if targets is None and stacked:
            self.criterion = "validation_minus_qwk_plus_condensed_ndcg"

    def batch_loss(self, logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        if self.targets is None:
            return ordinal_loss(logits, self.grades[idx], self.pair_weights[idx])
        weight = self.stage.distill_weight
        loss = weight * distillation_loss(logits, torch.from_numpy(self.targets.probs[idx]))
        human = torch.from_numpy(self.pairs.labeled[idx])
        if weight < 1 and human.any():
            loss = loss + (1 - weight) * ordinal_loss(
                logits[human], self.grades[idx][human], self.pair_weights[idx][human]
            )
        return loss

    def validation_loss(self, logits: np.ndarray) -> float:
        pairs = self.pairs
        if self.targets is not None:
            return kl_to_targets(logits, self.targets.validation_probs)
        if self.stacked:
            return -audit_figures(pairs.val_queries, pairs.val_items, pairs.val_grades, logits, self.num_grades)
        return nll(logits, pairs.val_grades)


@dataclass
class StageFit:
    """How a stage's fine-tuning went."""

    best_state: dict
    best_epoch: int
    history: list[dict]
    steps: int
    planned_steps: int
    stop_reason: str


class StageTrainer:
    """The fine-tuning loop of one stage: AdamW (encoder and head learning rates) with clipped
    gradients under a warmup/linear-decay schedule, validated after each epoch."""

    def __init__(
        self,
        teacher: OrdinalCrossEncoder,
        pairs: StagePairs,
        objective: StageObjective,
        stage: TeacherStageConfig,
        cfg: TeachersConfig,
        started: float,
    ):
        self.teacher, self.pairs, self.objective, self.stage, self.seed = teacher, pairs, objective, stage, cfg.seed
        self.started = started
        head_params = list(teacher.head.parameters())
        if teacher.feature_score is not None:
            head_params += list(teacher.feature_score.linear.parameters())
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in teacher.encoder.parameters() if p.requires_grad], "lr": stage.learning_rate},
                {"params": head_params, "lr": cfg.head_learning_rate},
            ],
            weight_decay=cfg.weight_decay,
        )
        self.total_steps = stage.epochs * math.ceil(len(pairs.train_grades) / stage.batch_size)
        if stage.max_steps:
            self.total_steps = min(self.total_steps, stage.max_steps)
        warmup = max(1, int(cfg.warmup_fraction * self.total_steps))
        self.scheduler = warmup_linear_decay(self.optimizer, warmup, self.total_steps)
        self.steps = 0

    def validation_logits(self) -> np.ndarray:
        pairs = self.pairs
        return self.teacher.text_logits(pairs.val_queries, pairs.val_texts, pairs.val_features)

    def train_epoch(self, order: np.ndarray, epoch: int) -> tuple[list[float], str]:
        """One pass over the training pairs in ``order``: the batch losses, and ``epochs``, or
        ``max_steps`` / ``max_seconds`` when that budget ran out during it."""
        from tqdm.auto import tqdm

        teacher, pairs, size = self.teacher, self.pairs, self.stage.batch_size
        losses = []
        for start in tqdm(
            range(0, len(order), size), desc=f"{self.stage.name} epoch {epoch}", unit="batch", leave=False
        ):
            idx = order[start : start + size]
            batch = teacher.tokenize([pairs.train_queries[i] for i in idx], [pairs.train_texts[i] for i in idx])
            if pairs.train_features is not None:
                batch["features"] = torch.from_numpy(pairs.train_features[idx])
            loss = self.objective.batch_loss(teacher(**batch), idx)
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(loss.item())
            self.steps += 1
            if self.steps >= self.total_steps:
                return losses, "max_steps"
            if self.stage.max_seconds and time.perf_counter() - self.started > self.stage.max_seconds:
                return losses, "max_seconds"
        return losses, "epochs"

    def fit(self) -> StageFit:
        """Epochs until the step or time budget, or ``patience`` epochs without a better validation
        loss; keeps the best state (a stacked teacher's start is a candidate)."""
        criterion, stage = self.objective.criterion, self.stage
        rng = np.random.default_rng(self.seed)
        best = {"loss": math.inf, "state": None, "epoch": 0}
        history, bad_epochs, stop_reason = [], 0, "epochs"
        if self.objective.stacked:
            start_loss = self.objective.validation_loss(self.validation_logits())
            history.append({"epoch": 0, "steps": 0, criterion: start_loss})
            best = {"loss": start_loss, "state": copy.deepcopy(self.teacher.state_dict()), "epoch": 0}
        self.teacher.train()
        for epoch in range(1, stage.epochs + 1):
            losses, stop_reason = self.train_epoch(rng.permutation(len(self.pairs.train_grades)), epoch)
            val_loss = self.objective.validation_loss(self.validation_logits())
            history.append(
                {"epoch": epoch, "steps": self.steps, "train_loss": float(np.mean(losses)), criterion: val_loss}
            )
            log.info(
                "stage %s epoch %d: train loss %.4f, %s %.4f", stage.name, epoch, np.mean(losses), criterion, val_loss
            )
            if val_loss < best["loss"]:
                best = {"loss": val_loss, "state": copy.deepcopy(self.teacher.state_dict()), "epoch": epoch}
                bad_epochs = 0
            else:
                bad_epochs += 1
            if stop_reason != "epochs":
                break
            if bad_epochs >= stage.patience:
                stop_reason = "early_stopping"
                break
        return StageFit(best["state"], best["epoch"], history, self.steps, self.total_steps, stop_reason)


def stage_record(
    stage: TeacherStageConfig,
    cfg: TeachersConfig,
    pairs: StagePairs,
    weights: np.ndarray,
    fit: StageFit,
    val_logits: np.ndarray,
    temperature: float,
    targets: SoftTargets | None,
    started: float,
) -> dict:
    """The training record of a fine-tuned stage (saved in its teacher folder)."""
    record = {
        "stage": asdict(stage),
        "train_pairs": int(len(pairs.train_grades)),
        "labeled_train_pairs": int(pairs.labeled.sum()),
        "validation_pairs": int(len(pairs.val_grades)),
        "class_weights": weights.round(4).tolist(),
        "class_weight_power": cfg.class_weight_power,
        "freeze_embeddings": cfg.freeze_embeddings,
        "torch_threads": torch.get_num_threads(),
        "steps": fit.steps,
        "planned_steps": fit.planned_steps,
        "best_epoch": fit.best_epoch,
        "stop_reason": fit.stop_reason,
        "cut_by_time": fit.stop_reason == "max_seconds",
        "stacked_on": stage.stack_on or None,
        "history": fit.history,
        "validation_nll_uncalibrated": nll(val_logits, pairs.val_grades),
        "validation_nll_calibrated": nll(val_logits, pairs.val_grades, temperature),
        "temperature": temperature,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if targets is not None:
        record["distillation"] = {
            "source": targets.source,
            "validation_kl": kl_to_targets(val_logits, targets.validation_probs),
            "target_seconds": targets.seconds,
        }
        record["seconds"] = round(record["seconds"] + targets.seconds, 2)
    return record


def train_stage(
    stage: TeacherStageConfig,
    cfg: TeachersConfig,
    dataset: Dataset,
    num_grades: int,
    out_dir: str | Path,
    targets: SoftTargets | None = None,
    stack_on: FeatureTeacher | None = None,
) -> dict:
    """Fine-tune (on human grades, or distilled from ``targets``; from the feature teacher ``stack_on``
    when given), early-stop, calibrate and save one teacher; returns its training record."""
    from unisup.encoders import packaged_minilm_path

    started = time.perf_counter()
    pairs = stage_pairs(stage, cfg, dataset, targets)
    teacher = OrdinalCrossEncoder.from_encoder(
        stage.base_model or packaged_minilm_path(),
        num_grades,
        stage.max_length,
        stage.num_layers,
        stage.item_fields,
        stage.attributes,
        cfg.seed,
    )
    if stack_on is not None:
        teacher.stack_on(stack_on)
        pairs = stacked_pairs(teacher, pairs)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.freeze_embeddings:
        teacher.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    weights = class_weights(pairs.train_grades[pairs.labeled], num_grades, cfg.class_weight_power)
    objective = StageObjective(stage, pairs, weights, num_grades, targets, stacked=stack_on is not None)
    trainer = StageTrainer(teacher, pairs, objective, stage, cfg, started)
    fit = trainer.fit()
    teacher.load_state_dict(fit.best_state)
    val_logits = trainer.validation_logits()
    teacher.temperature = fit_temperature(val_logits, pairs.val_grades)
    teacher.record = stage_record(stage, cfg, pairs, weights, fit, val_logits, teacher.temperature, targets, started)
    teacher.save(out_dir)
    return teacher.record


def audit_figures(queries, items, grades: np.ndarray, cumulative_logits: np.ndarray, num_grades: int) -> float:
    """QWK + condensed nDCG@10 of the grades the logits give: the audit's two figures, which select
    the epoch of a stacked stage on validation."""
    probs = grade_probabilities(torch.from_numpy(cumulative_logits)).numpy()
    judged = pa.table({"query": list(queries), "product_id": list(items), "rating": grades.tolist()})
    qwk = agreement(probs.argmax(axis=1), grades, num_grades)["qwk"] or 0.0
    return float(qwk + (condensed_ndcg(judged, probs) or 0.0))


def train_feature_stage(
    stage: TeacherStageConfig,
    cfg: TeachersConfig,
    dataset: Dataset,
    num_grades: int,
    out_dir: str | Path,
    featurizer: PairFeaturizer,
) -> dict:
    """Fit an ``ordinal_features`` stage on the training judgments, temperature-scale it on
    validation and save it; returns its training record."""
    started = time.perf_counter()
    records = stage_item_texts(dataset.catalog, stage)
    train_q, train_i, train_y = judged_pairs(dataset, "train", cfg.max_train_pairs, cfg.seed)
    val_q, val_i, val_y = judged_pairs(dataset, "validation", cfg.max_validation_pairs, cfg.seed)
    if len(train_y) == 0 or len(val_y) == 0:
        raise InputError(
            f"stage {stage.name}: the training and validation splits need judged pairs "
            f"(got {len(train_y)} and {len(val_y)})"
        )
    train_x = featurizer.features(train_q, [records[i] for i in train_i])
    val_x = featurizer.features(val_q, [records[i] for i in val_i])
    weights = class_weights(train_y, num_grades, cfg.class_weight_power)
    teacher = FeatureTeacher.fit(
        featurizer, train_x, train_y, num_grades, weights[train_y], cfg.feature_l2, cfg.seed, cfg.feature_iterations
    )
    val_logits = teacher.logits_of_features(val_x)
    teacher.temperature = fit_temperature(val_logits, val_y)
    record = {
        "stage": asdict(stage),
        "train_pairs": int(len(train_y)),
        "labeled_train_pairs": int(len(train_y)),
        "validation_pairs": int(len(val_y)),
        "class_weights": weights.round(4).tolist(),
        "class_weight_power": cfg.class_weight_power,
        "feature_l2": cfg.feature_l2,
        "feature_weights": teacher.weights(),
        "steps": cfg.feature_iterations,
        "planned_steps": cfg.feature_iterations,
        "best_epoch": 1,
        "stop_reason": "iterations",
        "cut_by_time": False,
        "stacked_on": None,
        "history": [],
        "validation_nll_uncalibrated": nll(val_logits, val_y),
        "validation_nll_calibrated": nll(val_logits, val_y, teacher.temperature),
        "temperature": teacher.temperature,
        "seconds": round(time.perf_counter() - started, 2),
    }
    teacher.record = record
    teacher.save(out_dir)
    return record


def check_stages(stages: list[TeacherStageConfig]) -> None:
    """Known kinds; each ``stack_on`` names an ``ordinal_features`` stage under a cross-encoder."""
    by_name = {s.name: s for s in stages}
    for stage in stages:
        if stage.kind not in KINDS:
            raise ConfigError(
                f"teachers.stages.{stage.name}: kind must be one of {', '.join(KINDS)}, got {stage.kind!r}"
            )
        if not stage.stack_on:
            continue
        if stage.kind != "ordinal_cross_encoder":
            raise ConfigError(f"teachers.stages.{stage.name}: only an ordinal_cross_encoder stage can be stacked")
        if by_name.get(stage.stack_on, TeacherStageConfig(kind="")).kind != FEATURES_KIND:
            raise ConfigError(
                f"teachers.stages.{stage.name}: stack_on must name an ordinal_features stage, got {stage.stack_on!r}"
            )
    check_distillation(stages)


def check_distillation(stages: list[TeacherStageConfig]) -> None:
    """Each ``distill_from`` names a later stage, on a trained stage."""
    position = {s.name: i for i, s in enumerate(stages)}
    for i, stage in enumerate(stages):
        if not stage.distill_from:
            continue
        if stage.kind == "served":
            raise ConfigError(f"teachers.stages.{stage.name}: a served stage is not trained, so it cannot be distilled")
        if position.get(stage.distill_from, -1) <= i:
            raise ConfigError(
                f"teachers.stages.{stage.name}: distill_from must name a later stage, got {stage.distill_from!r}"
            )
        if not 0.0 <= stage.distill_weight <= 1.0:
            raise ConfigError(
                f"teachers.stages.{stage.name}: distill_weight must be in [0, 1], got {stage.distill_weight}"
            )


def validation_escalation(
    cfg: TeachersConfig, dataset: Dataset, backend: Backend, relevance_threshold: int
) -> dict | None:
    """The escalation thresholds that send ``cfg.escalation_target_share`` of the validation pairs to the
    last stage, and the agreement with it they give (None when not asked or one stage)."""
    if not cfg.escalation_target_share or len(cfg.stages) < 2:
        return None
    queries, items, _ = judged_pairs(dataset, "validation", cfg.max_validation_pairs, cfg.seed)
    stage_probs = []
    for stage in cfg.stages:
        texts = stage_item_texts(dataset.catalog, stage, items)
        stage_probs.append(backend.predict(stage.name, queries, [texts[i] for i in items]))
    return calibrate_escalation(stage_probs, cfg.escalation_target_share, relevance_threshold)


def train_teachers(
    cfg: TeachersConfig,
    data_cfg: DataConfig,
    out_dir: str | Path,
    backend: Backend | None = None,
    channels_cfg: ChannelsConfig | None = None,
) -> dict:
    """Train every trainable stage and export all of them into a Triton repository at ``out_dir``.

    Stages of kind ``served`` are not trained here: their model must already be in the
    repository (e.g. an LLM judge); ``backend`` serves them where a stage is distilled
    from one or the escalation is calibrated. Feature stages are fitted first (with the
    dense channel's encoder and cache of ``channels_cfg``), then the others last first, so
    a distilled stage finds the stage it imitates trained and a stacked one its features. The escalation thresholds
    calibrated on validation are written beside the models (``escalation.json``), where
    ``labeling.escalate_rule=calibrated`` reads them, and the model card (``README.md``).
    Returns {"stages": {name: record}, "escalation": validation thresholds (or None), "repository": ...}.
    """
    import tempfile

    check_stages(cfg.stages)
    dataset = load_dataset(data_cfg)
    by_name = {s.name: s for s in cfg.stages}
    records = {}
    with tempfile.TemporaryDirectory(prefix="unisup-teachers-") as tmp:
        folders = {s.name: Path(tmp) / s.name for s in cfg.stages if s.kind != "served"}
        trained = TrainedStages(folders, backend)
        feature_stages = [s for s in cfg.stages if s.kind == FEATURES_KIND]
        if feature_stages:
            featurizer = featurizer_for(dataset.catalog, channels_cfg or ChannelsConfig())
        for stage in feature_stages:
            records[stage.name] = train_feature_stage(
                stage, cfg, dataset, data_cfg.num_grades, folders[stage.name], featurizer
            )
        for stage in reversed(cfg.stages):
            if stage.kind in ("served", FEATURES_KIND):
                continue
            targets = soft_targets(by_name[stage.distill_from], cfg, dataset, trained) if stage.distill_from else None
            base = FeatureTeacher.load(folders[stage.stack_on]) if stage.stack_on else None
            records[stage.name] = train_stage(
                stage, cfg, dataset, data_cfg.num_grades, folders[stage.name], targets, base
            )
        escalation = None
        if backend is not None or len(folders) == len(cfg.stages):
            escalation = validation_escalation(cfg, dataset, trained, data_cfg.relevance_threshold)
        if escalation:
            log.info("escalation on validation: %s", escalation)
        export_repository(folders, out_dir, cfg, data_cfg.num_grades)
        if escalation:
            storage.write_text(storage.join(str(out_dir), ESCALATION_FILE), json.dumps(escalation, indent=1))
    report = {
        "repository": str(out_dir),
        "stages": {name: records[name] for name in folders},
        "escalation": escalation,
        "num_grades": data_cfg.num_grades,
        "seconds": round(sum(r["seconds"] for r in records.values()), 2),
    }
    write_model_card(out_dir, report, cfg, data_cfg)
    return report


def train_and_audit(cfg: Config, repository: str) -> tuple[dict, dict]:
    """The ``train-teacher`` stage: train and export every stage into ``repository`` (local or
    gs://), audit the stages and the cascade in-process on the held-out judged pairs, and rewrite
    the repository's model card with the audit; returns (training report, audit)."""
    report = train_teachers(cfg.teachers, cfg.data, repository, channels_cfg=cfg.channels)
    with storage.local_copy(repository) as local:
        audit = quality_audit(cfg, InProcessBackend(local, cfg.labeling.batch_size), repository=str(local))
    write_model_card(repository, report, cfg.teachers, cfg.data, audit)
    return report, audit
