"""Bi-encoder training on per-query lists of fused targets.

One optimizer step takes ``lists_per_batch`` query lists (``items_per_list`` items each,
seeded sample that always keeps the best-target item), embeds queries and items with
their towers, scores every query against every item of the batch and applies the
configured loss (:mod:`unisup.biencoder.losses`), with the other lists' items as
in-batch negatives.

With ``freeze_item_tower`` (the default) the item tower is the start encoder unchanged:
the catalog is embedded once with it (content-keyed cache, shared with the dense channel
and the index) and a step encodes only the queries, with a separate query tower, so the
same wall budget buys many more steps.

Validation: the validation queries are retrieved over a candidate set (their judged
items plus ``validation_distractors`` seeded random catalog items, or the full catalog
with -1) and scored by nDCG@k against the human judgments, once before the first step
(the start, epoch 0) and after every epoch. Training stops early after ``patience``
epochs without improvement and the best trained epoch is exported. The start is no
candidate: the exported model is always a trained one, and when its best validation is
below the start the result says so (``below_start``) - the start encoder stays
available as the off-the-shelf baseline the evaluation compares with.

Determinism and resumption: batch order and list samples come from generators seeded by
(seed, epoch, list), and the dropout RNG is reseeded from (seed, step, rank) before every
step, so a run resumed from a checkpoint (model, optimizer, scheduler, loop state) takes
exactly the same steps as one that was never stopped. Only the same run resumes: beside
every checkpoint (and the best weights) a small JSON record holds the run's fingerprint
(:func:`config_fingerprint`: the training config and the content of the lists, the catalog,
the validation judgments and the start encoder) and the file's SHA-256. A checkpoint is
opened only when its record matches the run and the file, and then with
``torch.load(weights_only=True)``; any mismatch refuses the run (use another work dir, or
``resume=False``). A ``.pt`` file without a record is no checkpoint and is never opened; a
run that does not resume removes the work dir's checkpoints, best weights and records first.

On GPUs: bfloat16 autocast (``training.amp``) and ``torchrun`` DDP (each rank takes its
share of every batch's lists; rank 0 validates, checkpoints and exports).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from unisup import storage
from unisup.biencoder.losses import (
    MopprObjective,
    in_batch_masks,
    listwise_kl,
    listwise_softmax_cross_entropy,
    moppr_hierarchical_loss,
)
from unisup.biencoder.tower import FROZEN_ITEM_TOWER, FrozenItemEncoder, Tower, project, save_biencoder
from unisup.config import Config, ConfigError, TrainingConfig
from unisup.errors import ArtifactMismatch, InputError
from unisup.schedules import warmup_linear_decay
from unisup.schemas import DataValidationError

log = logging.getLogger(__name__)
LOSSES = ("listwise_ce", "listwise_kl", "moppr")
CHECKPOINT_PREFIX = "step-"


# ---------------------------------------------------------------- data


@dataclass
class QueryList:
    """One training list: catalog indices of its items and their per-item signals."""

    query: str
    items: np.ndarray
    targets: np.ndarray
    relevant: np.ndarray
    clicked: np.ndarray
    converted: np.ndarray
    impressed: np.ndarray


def group_lists(
    table: pa.Table, catalog_ids: list[str], relevance_threshold: int, source: str = "training_lists"
) -> list[QueryList]:
    """Training lists (``schemas.TRAINING_LISTS``) grouped per query, sorted by query.

    Raises :class:`DataValidationError` naming the rows whose item is not in the catalog.
    """
    index = {item: i for i, item in enumerate(catalog_ids)}
    items = table["item_id"].to_pylist()
    unknown = [row for row, item in enumerate(items, start=1) if item not in index]
    if unknown:
        raise DataValidationError(
            "training_lists", source, "item_id not in the catalog", column="item_id", rows=unknown
        )
    frame = table.select(["query", "target", "grade", "clicked", "converted", "source"]).to_pandas()
    frame["item"] = [index[i] for i in items]
    lists = []
    for query, rows in frame.groupby("query", sort=True):
        lists.append(
            QueryList(
                query=query,
                items=rows["item"].to_numpy(np.int64),
                targets=rows["target"].to_numpy(np.float32),
                relevant=(rows["grade"].fillna(-1).to_numpy() >= relevance_threshold),
                clicked=rows["clicked"].to_numpy(bool),
                converted=rows["converted"].to_numpy(bool),
                impressed=(rows["source"] == "impression").to_numpy(),
            )
        )
    return lists


def sample_list(query_list: QueryList, size: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``size`` items of the list: the best-target item plus a seeded sample."""
    n = len(query_list.items)
    if n <= size:
        return np.arange(n)
    best = int(np.argmax(query_list.targets))
    others = np.delete(np.arange(n), best)
    return np.sort(np.concatenate([[best], rng.choice(others, size=size - 1, replace=False)]))


def epoch_batches(num_lists: int, lists_per_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The seeded order of lists in one epoch, cut into batches (the last one may be smaller)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_lists)
    return [order[i : i + lists_per_batch] for i in range(0, num_lists, lists_per_batch)]


# ---------------------------------------------------------------- model


class BiEncoder(nn.Module):
    """Query tower and item tower (the same module when weights are shared)."""

    def __init__(self, query_tower: Tower, item_tower: Tower, item_frozen: bool = False):
        super().__init__()
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.item_frozen = item_frozen

    @property
    def shared(self) -> bool:
        return self.query_tower is self.item_tower

    @property
    def trainable(self) -> nn.Module:
        """What the optimizer updates and a checkpoint holds: with a frozen item tower the query
        tower and the item adapter (:class:`CachedItemTraining`), else both towers."""
        return CachedItemTraining(self.query_tower, self.item_tower.projection) if self.item_frozen else self

    def parameter_groups(self, cfg: TrainingConfig) -> list[dict]:
        """AdamW groups of trained towers: one, at the learning rate."""
        return [{"params": list(self.parameters())}]

    def forward(
        self, queries: dict[str, torch.Tensor], items: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_tower(**queries), self.item_tower(**items)


class CachedItemTraining(nn.Module):
    """The trainable part of a bi-encoder with a frozen item tower: the query tower encodes the
    queries, and the item adapter (the frozen tower's projection, if any) maps the items' cached
    frozen-encoder vectors."""

    def __init__(self, query_tower: Tower, item_adapter: nn.Linear | None):
        super().__init__()
        self.query_tower = query_tower
        self.item_adapter = item_adapter

    def forward(
        self, queries: dict[str, torch.Tensor], item_vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_tower(**queries), project(self.item_adapter, item_vectors)

    def parameter_groups(self, cfg: TrainingConfig) -> list[dict]:
        """AdamW groups: the query tower at the learning rate; the adapter at its own, undecayed."""
        groups = [{"params": list(self.query_tower.parameters())}]
        if self.item_adapter is not None:
            groups.append(
                {"params": list(self.item_adapter.parameters()), "lr": cfg.adapter_learning_rate, "weight_decay": 0.0}
            )
        return groups


def start_encoder_path(cfg: TrainingConfig) -> Path:
    """The encoder the towers start from: ``cfg.encoder_path``, default the packaged MiniLM."""
    from unisup.encoders import packaged_minilm_path

    return Path(cfg.encoder_path) if cfg.encoder_path else packaged_minilm_path()


def build_biencoder(cfg: TrainingConfig) -> BiEncoder:
    """Towers on the start encoder: a trainable query tower and the frozen start encoder as
    item tower (``freeze_item_tower``; with ``item_adapter`` a trainable identity-initialized
    projection on top), else shared or separate trainable towers."""
    path = start_encoder_path(cfg)
    projection = cfg.projection_dim or None
    if cfg.freeze_item_tower:
        query = Tower.from_pretrained(path, cfg.query_max_length, seed=cfg.seed)
        item = Tower.from_pretrained(path, cfg.item_max_length, seed=cfg.seed).requires_grad_(False)
        if cfg.item_adapter:
            item.add_identity_adapter()
        return BiEncoder(query, item, item_frozen=True)
    if cfg.shared_towers:
        tower = Tower.from_pretrained(path, max(cfg.query_max_length, cfg.item_max_length), projection, seed=cfg.seed)
        return BiEncoder(tower, tower)
    query = Tower.from_pretrained(path, cfg.query_max_length, projection, seed=cfg.seed)
    item = Tower.from_pretrained(path, cfg.item_max_length, projection, seed=cfg.seed + 1)
    return BiEncoder(query, item)


def _tokenize(tower: Tower, texts: list[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    batch = tower.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------- loss of one batch


def batch_loss(
    model: nn.Module,
    towers: BiEncoder,
    lists: list[QueryList],
    positions: list[np.ndarray],
    item_texts: list[str],
    cfg: TrainingConfig,
    device: torch.device,
    item_vectors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """The configured loss of one batch of lists; returns (loss, number of items). With
    ``item_vectors`` (the frozen item encoder's catalog embeddings, on ``device``) only the
    queries are encoded, by ``model`` (then a :class:`CachedItemTraining`)."""
    owner = np.concatenate([np.full(len(p), b) for b, p in enumerate(positions)])
    items = np.concatenate([ql.items[p] for ql, p in zip(lists, positions)])

    def gather(name: str) -> torch.Tensor:
        return torch.as_tensor(np.concatenate([getattr(ql, name)[p] for ql, p in zip(lists, positions)]), device=device)

    queries = _tokenize(towers.query_tower, [ql.query for ql in lists], cfg.query_max_length, device)
    use_amp = cfg.amp and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        if item_vectors is not None:
            query_vecs, item_vecs = model(queries, item_vectors[torch.as_tensor(items, device=device)])
        else:
            item_batch = _tokenize(towers.item_tower, [item_texts[i] for i in items], cfg.item_max_length, device)
            query_vecs, item_vecs = model(queries, item_batch)
    scores = query_vecs.float() @ item_vecs.float().T
    owner_t = torch.as_tensor(owner, device=device)
    own, candidates = in_batch_masks(owner_t, torch.as_tensor(items, device=device), len(lists), cfg.in_batch_negatives)
    columns = torch.arange(len(items), device=device)

    def per_row(values: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(own.shape, dtype=values.dtype, device=device)
        full[owner_t, columns] = values
        return full

    if cfg.loss == "moppr":
        weights = cfg.moppr_weights
        objectives = [
            MopprObjective("relevance", per_row(gather("relevant")), candidates, weights.get("relevance", 0.0)),
            MopprObjective(
                "click", per_row(gather("clicked")), own & per_row(gather("impressed")), weights.get("click", 0.0)
            ),
            MopprObjective(
                "conversion",
                per_row(gather("converted")),
                own & per_row(gather("clicked")),
                weights.get("conversion", 0.0),
            ),
        ]
        loss = moppr_hierarchical_loss(scores, objectives, cfg.score_temperature)
    else:
        fn = listwise_softmax_cross_entropy if cfg.loss == "listwise_ce" else listwise_kl
        loss = fn(scores, per_row(gather("targets")), own, candidates, cfg.score_temperature, cfg.target_temperature)
    return loss, len(items)


# ---------------------------------------------------------------- validation


def validation_candidates(
    catalog_ids: list[str], qrels: dict[str, dict[str, int]], distractors: int, seed: int
) -> np.ndarray:
    """Catalog indices retrieved over in validation: the judged items of the validation
    queries plus ``distractors`` seeded random items (all items with -1)."""
    if distractors < 0:
        return np.arange(len(catalog_ids))
    index = {item: i for i, item in enumerate(catalog_ids)}
    judged = sorted({index[item] for grades in qrels.values() for item in grades if item in index})
    rest = np.setdiff1d(np.arange(len(catalog_ids)), judged)
    extra = np.random.default_rng([seed, 99]).choice(rest, size=min(distractors, len(rest)), replace=False)
    return np.sort(np.concatenate([judged, extra]).astype(np.int64))


def validate_ndcg(
    towers: BiEncoder,
    catalog_ids: list[str],
    item_texts: list[str],
    candidates: np.ndarray,
    qrels: dict[str, dict[str, int]],
    cfg: TrainingConfig,
    relevance_threshold: int,
    catalog_vectors: np.ndarray | None = None,
) -> float:
    """Mean nDCG@k of the validation queries, retrieving over ``candidates`` (embedded by
    the item tower, or rows of ``catalog_vectors`` through its head when it is frozen)."""
    from unisup.encoders import top_k_inner_product
    from unisup.metrics import per_query_metrics

    queries = sorted(qrels)
    if catalog_vectors is not None:
        item_vecs = towers.item_tower.apply_head(catalog_vectors[candidates])
    else:
        item_vecs = _encode(
            towers.item_tower, [item_texts[i] for i in candidates], cfg.item_max_length, cfg.encode_batch_size
        )
    query_vecs = _encode(towers.query_tower, queries, cfg.query_max_length, cfg.encode_batch_size)
    idx, _ = top_k_inner_product(query_vecs, item_vecs, cfg.validation_k)
    rankings = {q: [catalog_ids[candidates[j]] for j in row] for q, row in zip(queries, idx)}
    per_query = per_query_metrics(rankings, qrels, k=cfg.validation_k, relevance_threshold=relevance_threshold)
    return float(np.mean(list(per_query[f"ndcg@{cfg.validation_k}"].values())))


def _encode(tower: Tower, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    saved = tower.max_length
    tower.max_length = max_length
    try:
        return tower.encode(texts, batch_size=batch_size)
    finally:
        tower.max_length = saved


# ---------------------------------------------------------------- checkpoints


@dataclass
class LoopState:
    """Where the loop is: resumable from a checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    start_metric: float | None = None
    best_metric: float = float("-inf")
    best_step: int = 0
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


def config_fingerprint(
    cfg: TrainingConfig,
    lists: pa.Table,
    catalog_ids: list[str],
    item_texts: list[str],
    validation_qrels: dict[str, dict[str, int]],
    relevance_threshold: int,
    start_encoder: str,
) -> str:
    """SHA-256 of what determines the trajectory: the training config, the content of the lists,
    the catalog's ids and item texts, the validation judgments, the relevance threshold and the
    start encoder's fingerprint; a checkpoint only resumes an identical run."""
    payload = {
        "training": dataclasses.asdict(cfg),
        "training_lists": lists.to_pydict(),
        "catalog": [catalog_ids, item_texts],
        "validation": validation_qrels,
        "relevance_threshold": relevance_threshold,
        "start_encoder": start_encoder,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def record_path(path: Path) -> Path:
    """The JSON record beside a checkpoint file: the run's fingerprint and the file's SHA-256."""
    return path.with_suffix(".json")


def checkpoints_in(folder: Path) -> list[Path]:
    """The step checkpoints of ``folder`` that have a record, oldest first."""
    return [record.with_suffix(".pt") for record in sorted(folder.glob(f"{CHECKPOINT_PREFIX}*.json"))]


def latest_checkpoint(folder: Path) -> Path | None:
    found = checkpoints_in(folder)
    return found[-1] if found else None


def _save(obj: dict, path: Path, fingerprint: str) -> None:
    """``torch.save`` to ``path`` atomically, then its record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    record = {"fingerprint": fingerprint, "sha256": storage.content_digest(str(tmp))}
    os.replace(tmp, path)
    storage.write_text(str(record_path(path)), json.dumps(record))


def _load(path: Path, fingerprint: str, device: torch.device) -> dict:
    """The weights-only content of ``path``, read only once its record shows that this run wrote
    it (same fingerprint) and that it has not changed since; raises :class:`ArtifactMismatch`."""
    advice = "use another work_dir or resume=False"
    try:
        record = json.loads(record_path(path).read_text())
        written_by, sha256 = record["fingerprint"], record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ArtifactMismatch(f"{path}: no readable checkpoint record {record_path(path).name}; {advice}") from None
    if written_by != fingerprint:
        raise ArtifactMismatch(
            f"{path}: written by a run with a different training config or inputs (training lists, catalog, "
            f"validation judgments or start encoder); {advice}"
        )
    if not path.exists() or storage.content_digest(str(path)) != sha256:
        raise ArtifactMismatch(
            f"{path}: missing or changed since it was written (SHA-256 differs from its record); {advice}"
        )
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ArtifactMismatch(f"{path}: holds more than weights, refused to load it; {advice}") from None


def _clear(work: Path) -> None:
    """Remove the checkpoints, best weights and records an earlier run left in ``work``."""
    for path in [*work.glob(f"checkpoints/{CHECKPOINT_PREFIX}*"), *work.glob("best.*")]:
        path.unlink()


def save_checkpoint(
    folder: Path, trainable: nn.Module, optimizer, scheduler, state: LoopState, fingerprint: str, keep: int
) -> Path:
    """Write ``step-XXXXXXXX.pt`` (the trainable weights, optimizer, scheduler and loop state)
    atomically with its record, and keep the ``keep`` most recent."""
    path = folder / f"{CHECKPOINT_PREFIX}{state.step:08d}.pt"
    _save(
        {
            "model": trainable.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": dataclasses.asdict(state),
        },
        path,
        fingerprint,
    )
    for old in checkpoints_in(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        record_path(old).unlink()
    return path


# ---------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a training run did: where the model went, steps, validation history, throughput."""

    model_dir: str
    steps: int
    epochs: int
    start_metric: float | None
    best_metric: float
    best_step: int
    below_start: bool
    stopped_early: bool
    resumed_from_step: int
    history: list[dict]
    train_seconds: float
    lists_per_second: float
    items_per_second: float
    parameters: dict
    triton_model: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the ``torchrun`` environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(cfg: TrainingConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def check_settings(cfg: TrainingConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad ``training.*`` setting."""
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"training.device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is cuda, but no CUDA device is available")
    if cfg.loss not in LOSSES:
        raise ConfigError(f"training.loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.item_adapter and not cfg.freeze_item_tower:
        raise ConfigError(
            "training.item_adapter needs training.freeze_item_tower=true (a trained item tower needs no adapter)"
        )
    if cfg.freeze_item_tower and cfg.projection_dim:
        raise ConfigError(
            "training.projection_dim needs training.freeze_item_tower=false (the frozen item tower has no projection)"
        )
    for name in ("lists_per_batch", "items_per_list", "checkpoint_every", "max_epochs", "validation_k"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"training.{name} must be >= 1, got {getattr(cfg, name)}")


def train_biencoder(
    lists: pa.Table,
    catalog: pa.Table,
    validation_qrels: dict[str, dict[str, int]],
    cfg: TrainingConfig,
    out_dir: str | Path,
    work_dir: str | Path | None = None,
    relevance_threshold: int = 2,
    triton_repository: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    metadata: dict | None = None,
    embedding_cache_dir: str | Path | None = None,
    embedding_batch_size: int = 64,
) -> TrainResult:
    """Train the bi-encoder on ``lists`` and write it to ``out_dir`` (``save_biencoder``
    layout), the query tower also into ``triton_repository`` when given.

    Checkpoints go to ``work_dir/checkpoints`` (default ``out_dir/../<name>.work``); with
    ``resume`` the latest one there is continued if this very run wrote it (see the module
    docstring), else the run is refused. ``on_step(step, loss)`` is called after
    every optimizer step. A frozen item tower embeds the catalog in batches of
    ``embedding_batch_size`` through the cache in ``embedding_cache_dir`` (none: no cache).
    """
    from unisup.data.catalog import item_texts as catalog_texts
    from unisup.encoders import model_fingerprint

    check_settings(cfg)
    rank, world, device = _setup_distributed(cfg)
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.parent / f"{out_dir.name}.work"
    catalog_ids = catalog["product_id"].to_pylist()
    texts = catalog_texts(catalog, tuple(cfg.item_fields))
    query_lists = group_lists(lists, catalog_ids, relevance_threshold)
    if not query_lists:
        raise InputError("no training lists: the training-lists table is empty")
    start_encoder = model_fingerprint(str(start_encoder_path(cfg)))
    fingerprint = config_fingerprint(
        cfg, lists, catalog_ids, texts, validation_qrels, relevance_threshold, start_encoder
    )
    checkpoint = latest_checkpoint(work / "checkpoints") if resume else None
    saved = _load(checkpoint, fingerprint, device) if checkpoint is not None else None
    if saved is None and rank == 0:
        _clear(work)
    total_steps = cfg.max_epochs * -(-len(query_lists) // cfg.lists_per_batch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    towers = build_biencoder(cfg).to(device)
    towers.train()
    catalog_vectors, frozen_record = None, {}
    if towers.item_frozen:
        frozen = FrozenItemEncoder(towers.item_tower, start_encoder, embedding_batch_size)
        catalog_vectors = _frozen_encoder_vectors(frozen, texts, embedding_cache_dir, rank, world, progress)
        frozen_record = {FROZEN_ITEM_TOWER: frozen.record()}
    run = _Run(cfg, towers, towers.trainable, query_lists, texts, device, rank, world, work, fingerprint, total_steps)
    run.item_vectors = torch.as_tensor(catalog_vectors, device=device) if catalog_vectors is not None else None
    if saved is not None:
        run.restore(saved)
        log.info("resumed from %s (step %d)", checkpoint, run.state.step)
    resumed_from = run.state.step
    validate = _validator(towers, catalog_ids, texts, validation_qrels, cfg, relevance_threshold, catalog_vectors)
    run.validate_start(validate)
    run.loop(validate, progress, on_step)
    result = run.result(out_dir, resumed_from)
    if rank == 0:
        run.load_best()
        _export(towers, out_dir, cfg, result, triton_repository, {**frozen_record, **(metadata or {})})
    if world > 1:
        torch.distributed.barrier()
    return result


def _validator(
    towers: BiEncoder,
    catalog_ids: list[str],
    texts: list[str],
    validation_qrels: dict[str, dict[str, int]],
    cfg: TrainingConfig,
    relevance_threshold: int,
    catalog_vectors: np.ndarray | None,
) -> Callable[[], float] | None:
    """The validation nDCG of the towers as they are now, over the configured candidates; None
    without validation judgments."""
    if not validation_qrels:
        return None
    candidates = validation_candidates(catalog_ids, validation_qrels, cfg.validation_distractors, cfg.seed)
    return functools.partial(
        validate_ndcg,
        towers,
        catalog_ids,
        texts,
        candidates,
        validation_qrels,
        cfg,
        relevance_threshold,
        catalog_vectors,
    )


def _setup_distributed(cfg: TrainingConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the process group under ``torchrun``."""
    rank, world, local_rank = _distributed()
    device = _device(cfg, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def _frozen_encoder_vectors(
    frozen: FrozenItemEncoder, texts: list[str], cache_dir, rank: int, world: int, progress: bool
) -> np.ndarray:
    """The frozen item encoder's catalog vectors through the embedding cache: rank 0 fills it,
    the other ranks read it."""
    from unisup.encoders import cached_encode

    vectors = cached_encode(frozen, texts, cache_dir, progress) if rank == 0 else None
    if world > 1:
        torch.distributed.barrier()
        if rank > 0:
            vectors = cached_encode(frozen, texts, cache_dir)
    return vectors


class _Run:
    """One training run's moving parts: model, optimizer, schedule, loop state; its steps and epochs."""

    def __init__(
        self,
        cfg: TrainingConfig,
        towers: BiEncoder,
        trainable: nn.Module,
        query_lists: list[QueryList],
        texts: list[str],
        device: torch.device,
        rank: int,
        world: int,
        work: Path,
        fingerprint: str,
        total_steps: int,
    ):
        self.cfg, self.towers, self.trainable = cfg, towers, trainable
        self.query_lists, self.texts, self.device = query_lists, texts, device
        self.rank, self.world, self.fingerprint, self.total_steps = rank, world, fingerprint, total_steps
        self.checkpoints, self.best_path = work / "checkpoints", work / "best.pt"
        self.model: nn.Module = trainable
        if world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                trainable, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(
            trainable.parameter_groups(cfg), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.scheduler = warmup_linear_decay(
            self.optimizer, max(1, int(cfg.warmup_fraction * total_steps)), total_steps
        )
        self.state = LoopState()
        self.item_vectors: torch.Tensor | None = None
        self.items_seen, self.lists_seen, self.seconds = 0, 0, 0.0

    def restore(self, saved: dict) -> None:
        self.trainable.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = LoopState(**saved["state"])

    def validate_start(self, validate: Callable[[], float] | None) -> None:
        """Score the start (epoch 0) once per run, on rank 0."""
        if self.rank == 0 and validate is not None and self.state.start_metric is None:
            self.state.start_metric = validate()
            k = self.cfg.validation_k
            self.state.history.append({"epoch": 0, "step": 0, f"validation_ndcg@{k}": self.state.start_metric})
            log.info("start: validation nDCG@%d %.4f", k, self.state.start_metric)

    def loop(
        self, validate: Callable[[], float] | None, progress: bool, on_step: Callable[[int, float], None] | None
    ) -> None:
        """Epochs of steps until the budget, ``max_epochs`` or early stopping; a checkpoint every
        ``checkpoint_every`` steps and at the end."""
        from tqdm.auto import tqdm

        cfg, state = self.cfg, self.state
        bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            desc="training",
            unit="step",
            disable=not progress or self.rank > 0,
        )
        while state.step < self.total_steps and state.epoch < cfg.max_epochs and not state.stopped_early:
            batches = epoch_batches(len(self.query_lists), cfg.lists_per_batch, cfg.seed, state.epoch)
            while state.batch_in_epoch < len(batches) and state.step < self.total_steps:
                loss = self.step(batches[state.batch_in_epoch][self.rank :: self.world])
                bar.set_postfix(loss=f"{loss:.4f}", epoch=state.epoch, refresh=False)
                bar.update(1)  # one refresh per step: a log file gets one line, not two
                if self.rank == 0 and state.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
                if on_step is not None:
                    on_step(state.step, loss)
            _end_epoch(state, validate, self.trainable, cfg, self.best_path, self.fingerprint, self.rank, self.world)
        bar.close()
        if self.rank == 0:
            self.checkpoint()

    def step(self, chosen: np.ndarray) -> float:
        """One optimizer step on the lists ``chosen`` (this rank's share of the batch); returns the loss."""
        cfg, state = self.cfg, self.state
        started = time.perf_counter()
        batch_lists = [self.query_lists[i] for i in chosen]
        positions = [
            sample_list(self.query_lists[i], cfg.items_per_list, np.random.default_rng([cfg.seed, state.epoch, int(i)]))
            for i in chosen
        ]
        torch.manual_seed(cfg.seed * 1_000_003 + state.step * 101 + self.rank)
        loss, n_items = batch_loss(
            self.model, self.towers, batch_lists, positions, self.texts, cfg, self.device, self.item_vectors
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.trainable.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        state.step += 1
        state.batch_in_epoch += 1
        self.seconds += time.perf_counter() - started
        self.items_seen += n_items
        self.lists_seen += len(batch_lists)
        return float(loss.item())

    def checkpoint(self) -> None:
        save_checkpoint(
            self.checkpoints,
            self.trainable,
            self.optimizer,
            self.scheduler,
            self.state,
            self.fingerprint,
            self.cfg.keep_checkpoints,
        )

    def load_best(self) -> None:
        """The best epoch's weights back into the towers (when an epoch was validated)."""
        if self.state.best_step > 0:
            self.trainable.load_state_dict(_load(self.best_path, self.fingerprint, self.device))

    def result(self, out_dir: Path, resumed_from: int) -> TrainResult:
        state, seconds = self.state, self.seconds
        below_start = state.start_metric is not None and state.best_metric < state.start_metric
        if self.rank == 0 and below_start:
            log.warning(
                "below the start: the trained model's best validation nDCG@%d %.4f is below the start encoder's %.4f",
                self.cfg.validation_k,
                state.best_metric,
                state.start_metric,
            )
        return TrainResult(
            model_dir=str(out_dir),
            steps=state.step,
            epochs=state.epoch,
            start_metric=state.start_metric,
            best_metric=state.best_metric,
            best_step=state.best_step,
            below_start=below_start,
            stopped_early=state.stopped_early,
            resumed_from_step=resumed_from,
            history=state.history,
            train_seconds=seconds,
            lists_per_second=self.lists_seen * self.world / seconds if seconds else 0.0,
            items_per_second=self.items_seen * self.world / seconds if seconds else 0.0,
            parameters=dataclasses.asdict(self.cfg),
        )


def _end_epoch(
    state: LoopState,
    validate: Callable[[], float] | None,
    trainable: nn.Module,
    cfg: TrainingConfig,
    best_path: Path,
    fingerprint: str,
    rank: int,
    world: int,
) -> None:
    """Validate (rank 0), update early stopping and the best weights, move to the next epoch."""
    decision = [state.stopped_early]
    if rank == 0 and validate is not None:
        metric = validate()
        state.history.append(
            {"epoch": state.epoch + 1, "step": state.step, f"validation_ndcg@{cfg.validation_k}": metric}
        )
        log.info("epoch %d (step %d): validation nDCG@%d %.4f", state.epoch + 1, state.step, cfg.validation_k, metric)
        if metric > state.best_metric:
            state.best_metric, state.best_step, state.epochs_without_improvement = metric, state.step, 0
            _save(trainable.state_dict(), best_path, fingerprint)
        else:
            state.epochs_without_improvement += 1
        decision = [state.epochs_without_improvement >= cfg.patience]
    if world > 1:
        torch.distributed.broadcast_object_list(decision, src=0)
    state.stopped_early = bool(decision[0])
    state.epoch += 1
    state.batch_in_epoch = 0


def _export(
    towers: BiEncoder, out_dir: Path, cfg: TrainingConfig, result: TrainResult, triton_repository, metadata: dict
) -> None:
    from unisup.biencoder.export import export_query_encoder

    towers.eval()
    summary = {k: v for k, v in result.to_dict().items() if k not in ("model_dir", "triton_model")}
    save_biencoder(towers.query_tower, towers.item_tower, out_dir, {"trained": True, "training": summary, **metadata})
    if triton_repository:
        result.triton_model = export_query_encoder(out_dir, triton_repository, cfg)


# ---------------------------------------------------------------- the stage


def train(
    lists_uri: str,
    out_uri: str,
    config: Config,
    triton_repository: str | None = None,
    work_dir: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """The ``train`` stage: lists (Parquet, local or gs://) + catalog + validation judgments
    of ``config.data`` -> a bi-encoder folder at ``out_uri`` (and the Triton query encoder).
    A frozen item tower's catalog embeddings go through the dense channel's cache
    (``channels.cache_dir``, batches of ``channels.dense_batch_size``). The training settings
    are checked first; lists with an item not in the catalog are refused, naming the file and rows."""
    import tempfile

    from unisup.data.dataset import load_dataset
    from unisup.data.tables import read_raw
    from unisup.model_card import data_uris
    from unisup.schemas import RuleContext, validate

    check_settings(config.training)
    dataset = load_dataset(config.data)
    known = RuleContext(known_items=frozenset(dataset.catalog["product_id"].to_pylist()))
    lists = validate(read_raw(lists_uri, "training_lists"), "training_lists", lists_uri, known).accepted
    with tempfile.TemporaryDirectory(prefix="unisup-train-") as tmp:
        local_out = Path(tmp) / "model" if storage.is_gcs(out_uri) else Path(out_uri)
        result = train_biencoder(
            lists,
            dataset.catalog,
            dataset.qrels("validation"),
            config.training,
            local_out,
            work_dir,
            config.data.relevance_threshold,
            triton_repository,
            resume,
            progress,
            metadata={"training_lists": lists_uri, "data": data_uris(config.data)},
            embedding_cache_dir=config.channels.cache_dir or None,
            embedding_batch_size=config.channels.dense_batch_size,
        )
        if storage.is_gcs(out_uri):
            storage.upload_dir(local_out, out_uri)
            result.model_dir = out_uri
    return result
