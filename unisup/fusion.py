"""Unified supervision: the multichannel prior, fused targets and per-query training lists.

For each (query, item) the fused target is (ARCHITECTURE.md, step 4)

    t = g(grade) + a * prior + b * [grade >= r0] * e - c * [grade < r0] * prior

with ``g`` a gain per grade (or its expectation under the teacher's per-grade
probabilities), ``prior`` the multichannel retrieval prior and ``e`` the engagement,
both normalized within the query; ``r0`` is ``data.relevance_threshold``. Engagement
never lifts an irrelevant item, and an irrelevant item that the channels rank high gets
a negative target (a weighted hard negative).

Named presets (``fusion.preset``) change only the weights and the list mix, so the
baselines are trained by configuration alone; ``engagement_only`` replaces the target
by the click (today's practice: clicked items are the positives, impressions and random
items the negatives, no teacher labels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from unisup import storage
from unisup.config import Config, ConfigError, FusionConfig
from unisup.schemas import (
    ENGAGEMENT,
    LABELS,
    QUARANTINE_REASON,
    SOURCE_ROW,
    TRAINING_LISTS,
    RuleContext,
    Validated,
    engagement_schema,
    validate,
)

SOURCES = ("impression", "hard_negative", "under_impression", "teacher", "random")
NORMALIZATIONS = ("max", "sum", "minmax", "none")
SPLITS = ("logged", "all", "train", "validation", "test")


@dataclass(frozen=True)
class Preset:
    """A named training-signal variant: the target it trains on and the fields it overrides."""

    target: str  # "fused" | "clicks"
    overrides: dict[str, object] = field(default_factory=dict)
    uses_labels: bool = True


PRESETS: dict[str, Preset] = {
    "unified": Preset("fused"),
    "relevance_only": Preset("fused", {"prior_weight": 0.0, "engagement_weight": 0.0, "hard_negative_weight": 0.0}),
    "unified_no_prior": Preset("fused", {"prior_weight": 0.0, "hard_negative_weight": 0.0}),
    "unified_no_engagement": Preset("fused", {"engagement_weight": 0.0}),
    "engagement_only": Preset(
        "clicks",
        {
            "prior_weight": 0.0,
            "engagement_weight": 0.0,
            "hard_negative_weight": 0.0,
            "max_hard_negatives": 0,
            "max_under_impressions": 0,
            "max_teacher": 0,
        },
        uses_labels=False,
    ),
}


WEIGHTS = (
    "prior_weight",
    "engagement_weight",
    "hard_negative_weight",
    "prior_agreement_weight",
    "engagement_conversion_weight",
)


def resolve_preset(cfg: FusionConfig, num_grades: int) -> tuple[FusionConfig, Preset]:
    """The effective fusion config (preset overrides applied) and the preset; raises
    :class:`ConfigError` naming the first bad ``fusion.*`` setting."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"fusion.preset: unknown preset {cfg.preset!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[cfg.preset]
    effective = dataclasses.replace(cfg, **preset.overrides)
    if effective.prior_normalization not in NORMALIZATIONS:
        raise ConfigError(f"fusion.prior_normalization: {effective.prior_normalization!r} not in {NORMALIZATIONS}")
    if effective.engagement_normalization not in ("max", "minmax", "none"):
        raise ConfigError(
            f"fusion.engagement_normalization: {effective.engagement_normalization!r} not in max, minmax, none"
        )
    if effective.split not in SPLITS:
        raise ConfigError(f"fusion.split: {effective.split!r} not in {', '.join(SPLITS)}")
    if effective.num_random >= effective.list_size:
        raise ConfigError(
            f"fusion.num_random ({effective.num_random}) must be below fusion.list_size ({effective.list_size})"
        )
    if effective.prior_rrf_k < 0:
        raise ConfigError(f"fusion.prior_rrf_k must be >= 0, got {effective.prior_rrf_k}")
    if len(effective.grade_gains) != num_grades:
        raise ConfigError(
            f"fusion.grade_gains has {len(effective.grade_gains)} entries, expected one per grade ({num_grades})"
        )
    if not 0 <= effective.unlabeled_grade < num_grades:
        raise ConfigError(f"fusion.unlabeled_grade must be in 0..{num_grades - 1}, got {effective.unlabeled_grade}")
    numbers = {name: getattr(effective, name) for name in WEIGHTS}
    numbers |= {f"grade_gains[{i}]": gain for i, gain in enumerate(effective.grade_gains)}
    numbers |= {f"prior_channel_weights.{c}": w for c, w in effective.prior_channel_weights.items()}
    for name, value in numbers.items():
        if not math.isfinite(value):
            raise ConfigError(f"fusion.{name} must be a finite number, got {value!r}")
    return effective, preset


# ---------------------------------------------------------------- prior, engagement, target


def rank_columns(columns: Sequence[str]) -> list[str]:
    """The ``best_rank_<channel>`` columns of an engagement table."""
    return ENGAGEMENT.dynamic_names(columns)


def normalize_per_query(values: np.ndarray, query: np.ndarray, how: str) -> np.ndarray:
    """Normalize ``values`` within each query: divide by the max or the sum, min-max scale, or not."""
    if how == "none" or len(values) == 0:
        return values.astype(np.float64)
    frame = pd.DataFrame({"q": query, "v": values.astype(np.float64)})
    grouped = frame.groupby("q", sort=False)["v"]
    if how == "max":
        scale = grouped.transform("max").to_numpy()
        return np.divide(values, scale, out=np.zeros(len(values)), where=scale > 0)
    if how == "sum":
        scale = grouped.transform("sum").to_numpy()
        return np.divide(values, scale, out=np.zeros(len(values)), where=scale > 0)
    if how == "minmax":
        low = grouped.transform("min").to_numpy()
        span = grouped.transform("max").to_numpy() - low
        return np.divide(values - low, span, out=np.zeros(len(values)), where=span > 0)
    raise ValueError(f"unknown normalization {how!r}; expected one of {NORMALIZATIONS}")


def multichannel_prior(
    ranks: dict[str, np.ndarray], n_channels: np.ndarray, query: np.ndarray, cfg: FusionConfig
) -> np.ndarray:
    """``sum_c w_c / (k + rank_c) + agreement * n_channels``, normalized per query.

    ``ranks`` maps a channel name to 1-based ranks (NaN = not retrieved by that channel).
    """
    raw = np.zeros(len(query), dtype=np.float64)
    for channel, rank in ranks.items():
        weight = cfg.prior_channel_weights.get(channel, 1.0)
        raw += np.where(np.isnan(rank), 0.0, weight / (cfg.prior_rrf_k + np.nan_to_num(rank, nan=0.0)))
    raw += cfg.prior_agreement_weight * n_channels.astype(np.float64)
    return normalize_per_query(raw, query, cfg.prior_normalization)


def engagement_signal(
    impressions: np.ndarray, ctr_smoothed: np.ndarray, cvr_smoothed: np.ndarray, query: np.ndarray, cfg: FusionConfig
) -> np.ndarray:
    """``ctr + w * ctr * cvr`` (position-debiased, Beta-smoothed) of impressed items, normalized
    within the query; 0 for items never shown."""
    raw = ctr_smoothed + cfg.engagement_conversion_weight * ctr_smoothed * cvr_smoothed
    raw = np.where(impressions > 0, np.nan_to_num(raw, nan=0.0), 0.0)
    return normalize_per_query(raw, query, cfg.engagement_normalization)


def grade_gain(grade: np.ndarray, probs: np.ndarray | None, cfg: FusionConfig) -> np.ndarray:
    """g(grade): the configured gain of the grade, or its expectation under ``probs`` (n, K)."""
    gains = np.asarray(cfg.grade_gains, dtype=np.float64)
    if cfg.expected_gain and probs is not None:
        return probs.astype(np.float64) @ gains
    return gains[grade.astype(np.int64)]


def fused_target(
    gain: np.ndarray,
    grade: np.ndarray,
    prior: np.ndarray,
    engagement: np.ndarray,
    relevance_threshold: int,
    cfg: FusionConfig,
) -> np.ndarray:
    """``t = g + a * prior + b * [grade >= r0] * e - c * [grade < r0] * prior``."""
    relevant = grade >= relevance_threshold
    return (
        gain
        + cfg.prior_weight * prior
        + cfg.engagement_weight * relevant * engagement
        - cfg.hard_negative_weight * (~relevant) * prior
    )


# ---------------------------------------------------------------- training lists


@dataclass
class FusionResult:
    """The training lists (``schemas.TRAINING_LISTS``) and a JSON-able report."""

    lists: pa.Table
    report: dict


def _query_rng(seed: int, query: str) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(query.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def _candidate_pool(
    labels: pa.Table | None, engagement: pa.Table, cfg: FusionConfig, r0: int, num_grades: int
) -> pd.DataFrame:
    """One row per (query, item) known from the logs or the teacher, with prior, engagement,
    gain, grade and source."""
    eng = engagement.to_pandas()
    ranks = rank_columns(engagement.column_names)
    eng_q = eng["query"].to_numpy()
    rank_values = {c[len("best_rank_") :]: eng[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ranks}
    eng["prior"] = multichannel_prior(rank_values, eng["n_channels"].to_numpy(dtype=np.float64), eng_q, cfg)
    eng["engagement"] = engagement_signal(
        eng["impressions"].to_numpy(dtype=np.float64),
        eng["ctr_smoothed"].to_numpy(dtype=np.float64),
        eng["cvr_smoothed"].to_numpy(dtype=np.float64),
        eng_q,
        cfg,
    )
    if rank_values:
        stacked = np.stack(list(rank_values.values()), axis=1)
        eng["best_rank"] = np.where(np.isnan(stacked), np.inf, stacked).min(axis=1)
    else:
        eng["best_rank"] = np.inf
    eng["in_logs"] = True
    keep = [
        "query",
        "item_id",
        "impressions",
        "under_impressions",
        "clicks",
        "conversions",
        "prior",
        "engagement",
        "best_rank",
        "in_logs",
    ]
    pool = eng[keep]
    if labels is not None:
        lab = labels.select(["query", "item_id", "grade"]).to_pandas()
        probs = labels["probs"].to_pylist()
        lab["probs"] = probs
        pool = pool.merge(lab, on=["query", "item_id"], how="outer")
    else:
        pool = pool.assign(grade=pd.NA, probs=None)
    pool["in_logs"] = pool["in_logs"].astype("boolean").fillna(False).astype(bool)
    for col in ("impressions", "under_impressions", "clicks", "conversions"):
        pool[col] = pool[col].fillna(0).astype(np.int64)
    for col in ("prior", "engagement"):
        pool[col] = pool[col].fillna(0.0).astype(np.float64)
    labeled = pool["grade"].notna().to_numpy()
    grade = np.where(
        labeled, pool["grade"].fillna(cfg.unlabeled_grade).to_numpy(dtype=np.float64), cfg.unlabeled_grade
    ).astype(np.int64)
    probs_matrix = None
    if cfg.expected_gain and labeled.any():
        unlabeled_probs = np.eye(num_grades)[cfg.unlabeled_grade]
        probs_matrix = np.stack(
            [np.asarray(p, dtype=np.float64) if ok else unlabeled_probs for p, ok in zip(pool["probs"], labeled)]
        )
    pool["labeled"] = labeled
    pool["grade_used"] = grade
    pool["gain"] = grade_gain(grade, probs_matrix, cfg)
    hard = (
        labeled & (grade < r0) & (pool["best_rank"].fillna(np.inf).to_numpy(np.float64) <= cfg.hard_negative_max_rank)
    )
    source = np.where(
        hard,
        "hard_negative",
        np.where(
            pool["impressions"].to_numpy() > 0,
            "impression",
            np.where(pool["in_logs"].to_numpy(), "under_impression", "teacher"),
        ),
    )
    pool["source"] = source
    return pool.drop(columns=["probs"]).sort_values(["query", "item_id"], kind="stable").reset_index(drop=True)


def _select(items: pd.DataFrame, quota: int, rng: np.random.Generator, first: np.ndarray | None = None) -> pd.DataFrame:
    """Up to ``quota`` rows, seeded; rows flagged in ``first`` are taken before the others."""
    if quota <= 0 or items.empty:
        return items.iloc[:0]
    order = rng.permutation(len(items))
    if first is not None:
        order = order[np.argsort(~first[order], kind="stable")]
    return items.iloc[np.sort(order[:quota])]


def build_training_lists(
    labels: pa.Table | None,
    engagement: pa.Table,
    catalog_ids: Sequence[str],
    cfg: FusionConfig,
    relevance_threshold: int,
    num_grades: int,
    queries: Sequence[str] | None = None,
) -> FusionResult:
    """Per-query training lists with fused targets, deterministic for ``cfg.seed``.

    ``labels`` and ``engagement`` must already be validated (``schemas.LABELS`` /
    ``schemas.engagement_schema``, against the catalog), as :func:`fuse` does; ``queries``
    restricts the lists to those queries.
    """
    cfg, preset = resolve_preset(cfg, num_grades)
    pool = _candidate_pool(labels if preset.uses_labels else None, engagement, cfg, relevance_threshold, num_grades)
    requested = None
    if queries is not None:
        requested = len(set(queries))
        pool = pool[pool["query"].isin(set(queries))]
    if preset.target == "clicks":
        pool = pool[pool["in_logs"]]
        pool["target"] = (pool["clicks"] > 0).astype(np.float64)
    else:
        pool["target"] = fused_target(
            pool["gain"].to_numpy(),
            pool["grade_used"].to_numpy(),
            pool["prior"].to_numpy(),
            pool["engagement"].to_numpy(),
            relevance_threshold,
            cfg,
        )
    catalog = np.asarray(sorted(set(catalog_ids)), dtype=object)
    quotas = {
        "impression": cfg.max_impressions,
        "hard_negative": cfg.max_hard_negatives,
        "under_impression": cfg.max_under_impressions,
        "teacher": cfg.max_teacher,
    }
    lists, skipped = [], {}
    for query, items in pool.groupby("query", sort=True):
        rng = _query_rng(cfg.seed, query)
        room = cfg.list_size - cfg.num_random
        chosen = []
        for source, quota in quotas.items():
            candidates = items[items["source"] == source]
            picked = _select(candidates, min(quota, room), rng, first=(candidates["clicks"] > 0).to_numpy())
            room -= len(picked)
            chosen.append(picked)
        chosen_frame = pd.concat(chosen)
        positive = (
            chosen_frame["clicks"] > 0
            if preset.target == "clicks"
            else chosen_frame["grade_used"] >= relevance_threshold
        )
        reason = None
        if cfg.require_positive and not positive.any():
            reason = "no positive in the list"
        elif len(chosen_frame) + cfg.num_random < cfg.min_list_size:
            reason = f"fewer than {cfg.min_list_size} items"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        randoms = _random_negatives(catalog, set(items["item_id"]), cfg.num_random, rng)
        lists.append(_rows(query, chosen_frame, randoms, relevance_threshold, cfg, preset))
    table = pa.concat_tables(lists) if lists else TRAINING_LISTS.arrow_schema().empty_table()
    table = validate(table, TRAINING_LISTS, "fused training lists").accepted if table.num_rows else table
    report = _report(table, pool, skipped, cfg, preset, relevance_threshold)
    if requested is not None:
        report["queries_requested"] = requested
        report["queries_without_candidates"] = requested - report["queries_in_pool"]
    return FusionResult(table, report)


def _random_negatives(catalog: np.ndarray, exclude: set[str], count: int, rng: np.random.Generator) -> list[str]:
    if count <= 0 or len(catalog) == 0:
        return []
    draw = rng.choice(len(catalog), size=min(len(catalog), count + len(exclude) + 8), replace=False)
    return [catalog[i] for i in draw if catalog[i] not in exclude][:count]


def _rows(query: str, chosen: pd.DataFrame, randoms: list[str], r0: int, cfg: FusionConfig, preset: Preset) -> pa.Table:
    n_random = len(randoms)
    random_target = 0.0 if preset.target == "clicks" else float(cfg.grade_gains[cfg.unlabeled_grade])
    grades = (
        [int(g) if ok else None for g, ok in zip(chosen["grade_used"], chosen["labeled"])]
        if preset.uses_labels
        else [None] * len(chosen)
    )
    return pa.table(
        {
            "query": pa.array([query] * (len(chosen) + n_random), pa.string()),
            "item_id": pa.array(chosen["item_id"].tolist() + randoms, pa.string()),
            "target": pa.array(
                np.concatenate([chosen["target"].to_numpy(np.float64), np.full(n_random, random_target)]), pa.float32()
            ),
            "grade": pa.array(grades + [None] * n_random, pa.int8()),
            "prior": pa.array(np.concatenate([chosen["prior"].to_numpy(np.float64), np.zeros(n_random)]), pa.float32()),
            "engagement": pa.array(
                np.concatenate([chosen["engagement"].to_numpy(np.float64), np.zeros(n_random)]), pa.float32()
            ),
            "clicked": pa.array((chosen["clicks"] > 0).tolist() + [False] * n_random, pa.bool_()),
            "converted": pa.array((chosen["conversions"] > 0).tolist() + [False] * n_random, pa.bool_()),
            "source": pa.array(chosen["source"].tolist() + ["random"] * n_random, pa.string()),
        },
        schema=TRAINING_LISTS.arrow_schema(),
    )


def _report(
    table: pa.Table, pool: pd.DataFrame, skipped: dict[str, int], cfg: FusionConfig, preset: Preset, r0: int
) -> dict:
    frame = table.to_pandas()
    per_list = frame.groupby("query").size() if len(frame) else pd.Series(dtype=int)
    target = frame["target"].to_numpy(np.float64) if len(frame) else np.zeros(0)
    return {
        "preset": cfg.preset,
        "target": preset.target,
        "lists": int(frame["query"].nunique()) if len(frame) else 0,
        "rows": int(len(frame)),
        "queries_in_pool": int(pool["query"].nunique()),
        "pool_pairs": int(len(pool)),
        "skipped_lists": skipped,
        "items_per_source": {s: int((frame["source"] == s).sum()) if len(frame) else 0 for s in SOURCES},
        "items_per_list": {
            "min": int(per_list.min()) if len(per_list) else 0,
            "mean": float(per_list.mean()) if len(per_list) else 0.0,
            "max": int(per_list.max()) if len(per_list) else 0,
        },
        "relevant_items": int((frame["grade"].fillna(-1) >= r0).sum()) if len(frame) else 0,
        "clicked_items": int(frame["clicked"].sum()) if len(frame) else 0,
        "target_stats": {
            "min": float(target.min()) if len(target) else 0.0,
            "mean": float(target.mean()) if len(target) else 0.0,
            "max": float(target.max()) if len(target) else 0.0,
            "negative_share": float((target < 0).mean()) if len(target) else 0.0,
        },
        "parameters": dataclasses.asdict(cfg),
        "relevance_threshold": r0,
    }


# ---------------------------------------------------------------- the stage


def training_queries(config: Config, engagement: pa.Table) -> list[str] | None:
    """The queries that get a training list under ``fusion.split``: ``logged`` = every logged
    query except the held-out (validation and test) queries of the split, so that evaluation
    queries never train; ``all`` = no filter; else the queries of that split."""
    from unisup.data.dataset import read_split

    if config.fusion.split == "all":
        return None
    split = read_split(config.data.split_uri)
    if config.fusion.split == "logged":
        held_out = set(split["validation"]) | set(split["test"])
        return sorted(set(engagement["query"].to_pylist()) - held_out)
    return split[config.fusion.split]


def fuse(
    labels_uri: str,
    engagement_uri: str,
    out_uri: str,
    report_uri: str | None,
    config: Config,
    quarantine_uri: str | None = None,
) -> dict:
    """The ``fuse`` stage: check the fusion settings, read and validate labels and engagement
    (bad rows quarantined with a reason, rows in = accepted + quarantined per input), build the
    training lists of the configured split and write them as Parquet, the quarantined rows of
    both inputs as one Parquet table (``quarantine_uri``, default beside ``out_uri``) and the
    report as JSON; returns the report."""
    from unisup.data.dataset import load_catalog
    from unisup.data.tables import read_raw, write_table

    _, preset = resolve_preset(config.fusion, config.data.num_grades)
    catalog = load_catalog(config.data.catalog_uri).accepted
    known = frozenset(catalog["product_id"].to_pylist())
    context = RuleContext(num_grades=config.data.num_grades, known_items=known)
    raw_engagement = read_raw(engagement_uri, "engagement")
    inputs = {
        "engagement": validate(
            raw_engagement, engagement_schema(raw_engagement.column_names), engagement_uri, context, strict=False
        )
    }
    if preset.uses_labels:
        inputs["labels"] = validate(read_raw(labels_uri, "labels"), LABELS, labels_uri, context, strict=False)
    engagement = inputs["engagement"].accepted
    labels = inputs["labels"].accepted if "labels" in inputs else None
    result = build_training_lists(
        labels,
        engagement,
        catalog["product_id"].to_pylist(),
        config.fusion,
        config.data.relevance_threshold,
        config.data.num_grades,
        training_queries(config, engagement),
    )
    quarantine_uri = quarantine_uri or f"{str(out_uri).removesuffix('.parquet')}.quarantine.parquet"
    write_table(result.lists, out_uri)
    write_table(quarantine_table(inputs), quarantine_uri)
    report = {
        **result.report,
        "split": config.fusion.split,
        "inputs": {name: _accounting(validated) for name, validated in inputs.items()},
        "quarantine_uri": quarantine_uri,
    }
    if report_uri:
        storage.write_text(report_uri, json.dumps(report, indent=1))
    return report


def quarantine_table(inputs: dict[str, Validated]) -> pa.Table:
    """The quarantined rows of every input in one table: ``input`` (its name), the reason and
    the row in that input first, then the inputs' columns (null where a column is another input's)."""
    parts = [
        validated.quarantined.add_column(0, "input", pa.array([name] * validated.quarantined.num_rows, pa.string()))
        for name, validated in inputs.items()
    ]
    table = pa.concat_tables(parts, promote_options="default")
    first = ["input", QUARANTINE_REASON, SOURCE_ROW]
    return table.select(first + [c for c in table.column_names if c not in first])


def _accounting(validated: Validated) -> dict:
    return {
        "rows_in": validated.rows_in,
        "accepted": validated.accepted.num_rows,
        "quarantined": validated.quarantined.num_rows,
        "reasons": validated.reason_counts(),
    }
