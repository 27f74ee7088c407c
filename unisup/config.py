"""Typed configuration, loaded from YAML with a safe loader (``parse_yaml``).

Every section is a dataclass whose fields carry a default and help text
(``field(metadata={"help": ...})``). :func:`load_config` reads a profile
(``local``, ``cluster``) or a YAML file, applies ``section.key=value`` overrides, and
raises :class:`ConfigError` naming the bad key and saying why.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from unisup import __version__
from unisup.errors import UnisupError

PROFILES = ("local", "quality", "cluster")


class ConfigError(UnisupError, ValueError):
    """A configuration key is unknown, missing or of the wrong type."""


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a default (copied when mutable) and help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    catalog_uri: str = _f("data/sample/products.parquet", "catalog (Parquet or CSV) in the catalog schema")
    judgments_uri: str = _f("data/sample/judgments.csv", "human judgments (CSV or Parquet)")
    split_uri: str = _f("data/sample/split.json", "train/validation/test query split (JSON)")
    num_grades: int = _f(4, "K, the number of relevance grades (0 .. K-1)")
    relevance_threshold: int = _f(2, "r0: grades >= r0 count as relevant")
    split_seed: int = _f(13, "seed of the query split")
    split_fractions: list[float] = _f([0.5, 0.2, 0.3], "train, validation, test fractions of queries")


@dataclass
class ChannelsConfig:
    bm25_k1: float = _f(1.5, "BM25 k1")
    bm25_b: float = _f(0.75, "BM25 b")
    dense_model: str = _f("", "encoder folder for the dense channel; empty = the packaged MiniLM")
    dense_batch_size: int = _f(64, "texts per encoder batch")
    dense_max_length: int = _f(64, "max tokens per text for the dense channel")
    cache_dir: str = _f(".cache/embeddings", "embedding cache, keyed by a hash of content and model")
    top_k: int = _f(100, "items returned per query by each channel")
    rrf_k: int = _f(60, "k of reciprocal-rank fusion, 1 / (k + rank)")


@dataclass
class FusionConfig:
    preset: str = _f(
        "unified",
        "named preset: unified | relevance_only | engagement_only | unified_no_prior | unified_no_engagement "
        "(presets override the weights below; see unisup.fusion.PRESETS)",
    )
    split: str = _f(
        "logged",
        "queries that get a training list: logged (every logged query but the split's "
        "validation and test queries) | train | validation | test | all",
    )
    grade_gains: list[float] = _f([0.0, 1.0, 2.0, 3.0], "g(grade): target gain of each grade 0 .. K-1")
    expected_gain: bool = _f(True, "g = expected gain under the teacher's per-grade probs instead of gain[grade]")
    unlabeled_grade: int = _f(0, "grade assumed for items without a teacher label (random negatives)")
    prior_weight: float = _f(0.5, "a: weight of the multichannel prior in the target")
    engagement_weight: float = _f(1.0, "b: weight of engagement, applied only at grade >= data.relevance_threshold")
    hard_negative_weight: float = _f(1.0, "c: penalty on the prior of items below the relevance threshold")
    prior_rrf_k: int = _f(60, "k of the prior's reciprocal-rank term w_c / (k + rank_c)")
    prior_channel_weights: dict[str, float] = _f({}, "w_c per channel name; channels not listed weigh 1.0")
    prior_agreement_weight: float = _f(0.005, "weight of the agreement term (number of channels retrieving the item)")
    prior_normalization: str = _f("max", "per-query prior normalization: max | sum | minmax | none")
    engagement_conversion_weight: float = _f(
        1.0, "e = ctr_smoothed + w * ctr_smoothed * cvr_smoothed, before normalization"
    )
    engagement_normalization: str = _f("max", "per-query engagement normalization: max | minmax | none")
    list_size: int = _f(32, "maximum items per training list")
    max_impressions: int = _f(12, "at most this many impressed items per list")
    max_hard_negatives: int = _f(6, "at most this many mined hard negatives per list")
    max_under_impressions: int = _f(8, "at most this many under-impressions per list")
    max_teacher: int = _f(8, "at most this many other teacher-labeled candidates per list")
    num_random: int = _f(4, "random catalog negatives per list (reserved within list_size)")
    hard_negative_max_rank: int = _f(
        10, "an item below the relevance threshold ranked this high by some channel is a hard negative"
    )
    min_list_size: int = _f(4, "lists with fewer items are skipped (and counted in the report)")
    require_positive: bool = _f(True, "skip lists without a positive (relevant item; clicked item for engagement_only)")
    seed: int = _f(0, "seed of list sampling and random negatives")


@dataclass
class TrainingConfig:
    encoder_path: str = _f("", "HF encoder folder the towers start from; empty = the packaged MiniLM")
    freeze_item_tower: bool = _f(
        True,
        "item tower = the start encoder unchanged: the catalog is embedded once (content-keyed cache, "
        "channels.cache_dir) and only a separate query tower is trained",
    )
    shared_towers: bool = _f(
        True, "one encoder for queries and items (else two separate copies); unused when freeze_item_tower"
    )
    projection_dim: int = _f(0, "linear projection after pooling; 0 = none (needs freeze_item_tower: false)")
    item_adapter: bool = _f(
        False,
        "with freeze_item_tower: train a square projection (identity at the start) over the frozen item "
        "tower's cached embeddings; the index applies it to the cached catalog, so nothing is re-embedded",
    )
    adapter_learning_rate: float = _f(1e-3, "AdamW learning rate of the item adapter (no weight decay)")
    query_max_length: int = _f(16, "max tokens of a query")
    item_max_length: int = _f(64, "max tokens of an item text")
    item_fields: list[str] = _f(
        ["title", "brand", "description"], "catalog fields joined into the item text (the index embeds the same)"
    )
    loss: str = _f("listwise_ce", "listwise_ce | listwise_kl | moppr")
    score_temperature: float = _f(0.05, "T_s: softmax(s / T_s) over cosine scores")
    target_temperature: float = _f(0.5, "T_t: softmax(t / T_t) over fused targets")
    in_batch_negatives: bool = _f(True, "add the other lists' items of the batch as negatives")
    moppr_weights: dict[str, float] = _f(
        {"relevance": 1.0, "click": 0.5, "conversion": 0.25},
        "MOPPR objective weights (relevance > click > conversion)",
    )
    lists_per_batch: int = _f(8, "query lists per optimizer step")
    items_per_list: int = _f(24, "items sampled per list each step (seeded)")
    learning_rate: float = _f(5e-5, "AdamW learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_fraction: float = _f(0.1, "linear warmup share of the total steps, then linear decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm; 0 = off")
    max_epochs: int = _f(10, "passes over the training lists")
    max_steps: int = _f(0, "stop after this many optimizer steps; 0 = no limit")
    patience: int = _f(3, "early stopping: epochs without validation improvement")
    validation_k: int = _f(10, "cutoff of the validation nDCG")
    validation_distractors: int = _f(
        1000, "random catalog items added to the validation queries' judged items; -1 = full catalog"
    )
    checkpoint_every: int = _f(20, "steps between checkpoints")
    keep_checkpoints: int = _f(2, "most recent step checkpoints kept")
    seed: int = _f(0, "seed of initialization, list order, sampling and dropout")
    device: str = _f("auto", "auto | cpu | cuda")
    amp: bool = _f(True, "mixed precision (bfloat16 autocast) on CUDA")
    encode_batch_size: int = _f(128, "texts per batch when encoding for validation")
    triton_model_name: str = _f("query_encoder", "name of the exported query-encoder Triton model")
    triton_max_batch_size: int = _f(64, "max_batch_size of the Triton model")
    triton_queue_delay_us: int = _f(1000, "dynamic batching max queue delay (microseconds)")
    triton_instances: int = _f(1, "Triton model instances")


@dataclass
class IndexConfig:
    factory: str = _f(
        "HNSW32",
        "FAISS index factory string: Flat, HNSW32, IVF1024,PQ48np, SQ8, ... "
        "(PQ without 'np' also trains polysemous codes: minutes on 2 cores)",
    )
    metric: str = _f("inner_product", "inner_product (unit vectors: cosine) or l2")
    search_params: str = _f(
        "efSearch=128", "FAISS ParameterSpace string applied at search time, e.g. nprobe=16; empty = defaults"
    )
    batch_size: int = _f(64, "catalog texts per item-tower batch")
    shard_size: int = _f(4096, "catalog items per embedding shard (a crashed build resumes from its shards)")
    work_dir: str = _f(".cache/index_shards", "local folder for the embedding shards, keyed by model and catalog")
    train_size: int = _f(100000, "at most this many vectors train an index that needs training (IVF, PQ, SQ)")
    recall_queries: int = _f(200, "queries sampled to measure recall@10/@100 against exact search")
    use_gpu: bool = _f(True, "build on the GPU with faiss-gpu when one is present (HNSW stays on the CPU)")
    seed: int = _f(0, "seed of the training and recall samples")


@dataclass
class EvaluationConfig:
    cutoffs: list[int] = _f([10, 25, 100], "k of every metric@k; the first is the main cutoff")
    depth: int = _f(100, "items retrieved per query by every system (at least the largest cutoff)")
    split: str = _f("test", "judged split evaluated by default (train, validation, test)")
    baseline_channels: list[str] = _f(["bm25"], "non-model baselines from unisup.channels: bm25, minilm, rrf")
    n_bootstrap: int = _f(2000, "paired bootstrap resamples per (metric, baseline)")
    confidence: float = _f(0.95, "confidence level of the bootstrap intervals")
    seed: int = _f(0, "seed of the bootstrap")
    head_fraction: float = _f(0.3, "share of queries, most frequent first, in the head slice")
    max_engagement_queries: int = _f(2000, "at most this many held-out engagement queries (most frequent first)")
    gate_metric: str = _f("ndcg@10", "metric whose delta CI gates the blessing")
    gate_min_delta_ci_low: float = _f(0.0, "bless only if the lower CI bound of the gate metric's delta is >= this")
    gate_max_grade0_increase: float = _f(0.0, "bless only if grade0_share@k (main k) rises by at most this")
    gate_max_engagement_drop: float = _f(
        0.05, "bless only if engagement_recall@k (main k) drops by at most this fraction"
    )
    gate_baselines: list[str] = _f([], "baselines the gates apply to; empty = every baseline")
    gate_min_queries: int = _f(1, "bless only with at least this many judged queries")


@dataclass
class PromotionConfig:
    model_repository: str = _f("runs/serving/triton_models", "serving Triton model repository (local folder or gs://)")
    model_name: str = _f("query_encoder", "Triton model name of the query encoder")
    serve_versions: int = _f(
        2,
        "Triton version policy: serve the latest N versions (control and treatment); "
        "batching and instances come from the training section's triton_* keys",
    )
    index_root: str = _f(
        "runs/serving/indexes", "serving location of the indexes; version N goes to <root>/<model_name>/<N>"
    )
    config_root: str = _f(
        "runs/serving/experiments", "A/B config location; <root>/experiments/<id>/v000N.json + current.json"
    )
    experiment_id: str = _f("unisup-retrieval", "A/B experiment id")
    treatment_traffic: float = _f(0.1, "share of traffic sent to the treatment, 0..1")
    control_model_uri: str = _f("", "served control model; empty = the control of the current config")
    control_index_uri: str = _f("", "served control index; empty = the control of the current config")
    max_attempts: int = _f(20, "attempts of a conditional write lost to a concurrent push before a conflict error")
    transient_attempts: int = _f(
        5, "attempts of a storage call that failed with a transient 5xx / 429 / connection error"
    )


@dataclass
class TeacherStageConfig:
    name: str = _f("fast", "stage name: the Triton model name and the value of labels.stage")
    kind: str = _f(
        "ordinal_cross_encoder",
        "ordinal_cross_encoder (fine-tuned here) | ordinal_features (an ordinal model over lexical, dense and "
        "brand features, fitted here in seconds) | served (already in the Triton repository, e.g. an LLM judge)",
    )
    base_model: str = _f("", "encoder folder to fine-tune from; empty = the packaged MiniLM")
    num_layers: int = _f(0, "transformer layers kept from the base encoder (0 = all)")
    max_length: int = _f(32, "max tokens of the (query, item text) pair")
    item_fields: list[str] = _f(["title", "brand"], "catalog fields joined into the item text this stage reads")
    attributes: int = _f(0, "key: value attributes appended to the item text")
    epochs: int = _f(3, "training epochs (upper bound; early stopping may end sooner)")
    batch_size: int = _f(16, "training pairs per step")
    learning_rate: float = _f(5e-5, "AdamW learning rate of the encoder")
    max_steps: int = _f(0, "stop after this many steps (0 = no limit)")
    max_seconds: float = _f(
        0.0, "safety net only: stop training after this many seconds (0 = no limit); the audit flags a stage it cut"
    )
    patience: int = _f(1, "epochs without a better validation NLL before stopping")
    distill_from: str = _f(
        "",
        "a later stage this stage imitates (trained first; soft targets: its per-grade probabilities on the "
        "training judged pairs + BM25 candidates of the training queries); empty = human grades only",
    )
    distill_weight: float = _f(
        0.8, "with distill_from: weight w of the KL to the soft targets; 1 - w weighs the ordinal loss on human grades"
    )
    stack_on: str = _f(
        "",
        "an ordinal_features stage this cross-encoder adds to: it starts as that stage (its feature score and "
        "thresholds, the encoder's score at zero) and fine-tuning adds what the encoder sees; empty = text only",
    )


def _default_teacher_stages() -> list[TeacherStageConfig]:
    return [
        TeacherStageConfig("features", kind="ordinal_features"),
        TeacherStageConfig(
            "fast",
            num_layers=3,
            max_length=48,
            item_fields=["title", "brand"],
            epochs=4,
            batch_size=32,
            stack_on="features",
            distill_from="precise",
        ),
        TeacherStageConfig(
            "precise",
            num_layers=0,
            max_length=128,
            item_fields=["title", "brand", "description"],
            attributes=5,
            epochs=2,
            batch_size=16,
            stack_on="features",
        ),
    ]


@dataclass
class TeachersConfig:
    stages: list[TeacherStageConfig] = field(
        default_factory=_default_teacher_stages, metadata={"help": "cascade stages, cheapest first"}
    )
    repository_uri: str = _f(
        "runs/teachers/repository", "Triton model repository the teachers are exported to (local or gs://)"
    )
    max_train_pairs: int = _f(0, "subsample the training judgments to this many pairs (0 = all)")
    max_validation_pairs: int = _f(0, "subsample the validation judgments to this many pairs (0 = all)")
    class_weight_power: float = _f(0.5, "grade weights (N / (K * count))^power against class imbalance (0 = none)")
    head_learning_rate: float = _f(1e-3, "AdamW learning rate of the ordinal head")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_fraction: float = _f(0.1, "share of steps with a linear learning-rate warmup")
    seed: int = _f(0, "seed of initialization, shuffling and subsampling")
    audit_split: str = _f("test", "held-out split of the quality audit")
    audit_tolerance: float = _f(
        0.01,
        "a stage or the cascade fails the audit when its QWK or condensed nDCG@10 is this far below the "
        "features-only baseline",
    )
    feature_l2: float = _f(0.01, "L2 penalty on the feature weights of ordinal_features stages")
    feature_iterations: int = _f(500, "L-BFGS iterations fitting an ordinal_features stage (a fixed budget)")
    distill_candidates: int = _f(
        50, "unlabeled BM25 top-k catalog items per training query added to the pairs of distilled stages"
    )
    escalation_target_share: float = _f(
        0.3,
        "after training, report the labeling.max_prob_threshold / boundary_margin that send this share of the "
        "validation pairs to the last stage, and the agreement with it they give (0 = skip)",
    )
    freeze_embeddings: bool = _f(
        True, "keep the word embeddings fixed (a large, rarely-seen-vocabulary share of the weights)"
    )
    torch_threads: int = _f(
        0, "torch intra-op threads while training (0 = torch default; 1 is faster on a busy shared CPU)"
    )
    triton_max_batch_size: int = _f(256, "config.pbtxt max_batch_size")
    triton_instance_count: int = _f(1, "config.pbtxt instance_group count")
    triton_instance_kind: str = _f("KIND_CPU", "config.pbtxt instance_group kind: KIND_CPU | KIND_GPU")
    triton_max_queue_delay_us: int = _f(0, "dynamic_batching max_queue_delay_microseconds (0 = Triton's default)")
    triton_forward_batch_size: int = _f(
        64, "pairs per forward pass of a served teacher: a dynamic batch is sorted by length and split into these"
    )
    triton_python_paths: str = _f("", "':'-separated folders model.py adds to sys.path (where unisup is installed)")


@dataclass
class LabelingConfig:
    backend: str = _f(
        "inprocess",
        "inprocess (teachers loaded from the repository) | triton (gRPC to triton_url) | "
        "triton_local (start a tritonserver here over the teachers repository)",
    )
    stages: list[str] = _f([], "cascade order by stage name; empty = every teachers.stages entry in order")
    triton_url: str = _f("localhost:8001", "Triton gRPC host:port")
    batch_size: int = _f(64, "pairs per request (client-side batching)")
    concurrency: int = _f(8, "requests in flight at once")
    timeout_s: float = _f(60.0, "per-request deadline in seconds; each retry after a deadline doubles it")
    retries: int = _f(5, "attempts per request on UNAVAILABLE / DEADLINE_EXCEEDED")
    backoff_s: float = _f(0.5, "first retry wait; doubles per attempt, at most 10 s")
    ready_timeout_s: float = _f(60.0, "how long to wait for every model to be ready before starting")
    triton_local_fallback: bool = _f(
        False,
        "triton_local only: when no local tritonserver gets ready, label in-process instead of failing "
        "(warned and recorded as the report's fallback)",
    )
    shard_size: int = _f(2048, "pairs per output shard (the unit of resume)")
    work_uri: str = _f("", "where shards and the manifest live (stable across retries); empty = inside the output")
    escalate_rule: str = _f(
        "calibrated",
        "when a stage passes a pair on: calibrated (the rule and threshold train-teacher chose on validation for "
        "teachers.escalation_target_share, read from the teachers repository) | max_prob | boundary | either",
    )
    max_prob_threshold: float = _f(0.7, "escalate when the highest grade probability is below this")
    boundary_margin: float = _f(0.3, "escalate when |P(grade >= relevance_threshold) - 0.5| is below this")


@dataclass
class SimulatorConfig:
    out_uri: str = _f(
        "runs/logs", "where the simulated logs go (folder or gs:// prefix): date=YYYY-MM-DD/part-*.parquet"
    )
    seed: int = _f(17, "seed of every random draw of the simulator (same seed, same logs)")
    start_date: str = _f("2024-03-04", "first simulated day (YYYY-MM-DD, UTC)")
    num_days: int = _f(7, "number of simulated days (one partition and one resumable shard each)")
    num_requests: int = _f(30000, "search requests over all days (bots included)")
    num_derived_queries: int = _f(3000, "distinct queries derived from the catalog (brand, product type, attribute)")
    judged_query_share: float = _f(0.3, "share of requests that carry a training query of the split")
    zipf_exponent: float = _f(1.05, "head/tail skew of query frequencies (Zipf exponent)")
    num_users: int = _f(4000, "distinct human users")
    requests_per_session: float = _f(3.0, "mean requests per user session")
    channel_depth: int = _f(20, "candidates each production channel retrieves per request (its top k)")
    product_types: int = _f(400, "size of the product-type vocabulary mined from catalog titles")
    attribute_keys: list[str] = _f(
        [
            "product_colour",
            "colour",
            "printing_colours",
            "print_technology",
            "material",
            "connector_1",
            "processor_family",
        ],
        "catalog attributes the attribute channel and the derived queries use",
    )
    attribute_weights: dict[str, float] = _f(
        {"type": 2.0, "brand": 1.0, "attribute": 0.5},
        "attribute channel: score of a matched product type, brand, attribute value",
    )
    num_slots: int = _f(4, "ad slots filled per request by the auction")
    items_per_campaign: int = _f(40, "items per campaign (an advertiser = a brand, split into campaigns)")
    bid_mean: float = _f(0.5, "median cost-per-click bid (lognormal)")
    bid_sigma: float = _f(0.6, "lognormal sigma of bids")
    daily_budget_mean: float = _f(15.0, "median daily budget of a campaign (lognormal)")
    daily_budget_sigma: float = _f(1.0, "lognormal sigma of daily budgets")
    pacing: bool = _f(True, "throttle campaigns that spend faster than the day passes")
    reserve_price: float = _f(0.002, "minimum bid x predicted CTR to enter an auction")
    pctr_noise: float = _f(0.5, "lognormal sigma of the platform's predicted CTR around the true attractiveness")
    auction_jitter: float = _f(0.3, "lognormal sigma of per-request variation of the predicted CTR (context)")
    position_bias: float = _f(1.0, "eta: probability to examine slot p is (1 / p) ** eta")
    click_weights: dict[str, float] = _f(
        {"intercept": -3.0, "relevance": 1.5, "popularity": 0.9, "discount": 3.0, "badge": 1.0, "title": 0.8},
        "logit of attractiveness: relevance (grade / (K-1)) and factors that are not relevance",
    )
    conversion_weights: dict[str, float] = _f(
        {"intercept": -2.5, "relevance": 1.5, "discount": 1.5}, "logit of P(conversion | click)"
    )
    discount_share: float = _f(0.3, "share of items on discount (discount uniform in 5-50%)")
    badge_share: float = _f(0.15, "share of items with a promotion badge")
    bot_share: float = _f(0.03, "share of requests issued by bots")
    num_bot_users: int = _f(12, "distinct bot users")
    bot_click_rate: float = _f(0.6, "probability a bot clicks a shown ad, whatever its slot and relevance")
    malformed_rate: float = _f(0.001, "share of rows corrupted (missing ids, impossible positions, duplicates, ...)")


@dataclass
class ExtractionConfig:
    logs_uri: str = _f("runs/logs", "partitioned raw logs to read (folder or gs:// prefix)")
    out_uri: str = _f(
        "runs/engagement/engagement.parquet", "engagement table (Parquet); quarantine and report beside it"
    )
    start_date: str = _f("", "first day of the window (YYYY-MM-DD); empty = the first partition")
    end_date: str = _f("", "last day of the window, inclusive; empty = the last partition")
    holdout_days: int = _f(
        0, "the window's last N days (with logs) are extracted apart as held-out engagement for evaluation"
    )
    max_position: int = _f(10, "highest possible ad slot; larger positions are quarantined")
    filter_bots: bool = _f(True, "drop the rows of users the bot rules flag")
    bot_user_agent_pattern: str = _f("(?i)(bot|crawler|spider|headless)", "user agents matching this regex are bots")
    bot_max_requests_per_day: int = _f(150, "a user with more requests on one day is a bot")
    bot_max_ctr: float = _f(0.5, "a user with a higher click-through rate is a bot ...")
    bot_min_impressions: int = _f(50, "... once they have at least this many impressions")
    estimate_propensities: bool = _f(True, "estimate examination propensities from the logs (intervention harvesting)")
    propensities: list[float] = _f(
        [1.0, 0.5, 0.333, 0.25], "given propensities per slot (used when not estimated, or where data is short)"
    )
    min_propensity: float = _f(0.05, "propensities are clipped below at this value")
    min_harvest_pairs: int = _f(20, "fewest (query, item) pairs seen at slot 1 and slot p to estimate p's propensity")
    ctr_prior_mean: float = _f(0.05, "Beta prior mean of the debiased CTR")
    ctr_prior_strength: float = _f(20.0, "Beta prior strength (alpha + beta) of the CTR")
    cvr_prior_mean: float = _f(0.1, "Beta prior mean of conversions per click")
    cvr_prior_strength: float = _f(10.0, "Beta prior strength (alpha + beta) of the conversion rate")
    estimate_prior_means: bool = _f(True, "replace both prior means by the log-wide rates")
    duckdb_memory_limit: str = _f(
        "256MB",
        "DuckDB memory limit: beyond it the duplicate-id and aggregation hash tables spill to temporary files, so "
        "peak memory is about this plus ~250MB of Python; the least limit that works grows slowly with the row "
        "count (128MB fails at 30M rows, 256MB does not)",
    )
    duckdb_threads: int = _f(2, "DuckDB threads")
    engine: str = _f(
        "duckdb", "SQL engine of the extraction: duckdb (in this process) or spark (the same rules on Spark)"
    )
    spark_master: str = _f("local[2]", "Spark master of the spark engine: local[N] runs Spark inside this process")
    spark_driver_memory: str = _f("2g", "Spark driver memory (with local[N], the memory of the whole job)")
    spark_shuffle_partitions: int = _f(8, "Spark shuffle partitions (spark.sql.shuffle.partitions)")
    spark_work_uri: str = _f(
        "", "folder every Spark executor reaches (gs://...) for the parts Spark writes; empty = the driver's disk"
    )
    spark_submit: str = _f(
        "in-process",
        "how the pipeline task runs the spark engine: in-process (Spark in the task, spark_master) or k8s-operator "
        "(a SparkApplication for the Spark Operator, which the task creates and waits for)",
    )
    spark_image: str = _f(
        f"ghcr.io/unisup/spark:{__version__}",
        "k8s-operator: the Spark image of driver and executors (containers/Dockerfile.spark; SPARK_IMAGE of "
        "components/_image.py)",
    )
    spark_main_application_file: str = _f(
        "local:///opt/unisup/unisup/cli.py", "k8s-operator: the unisup CLI inside spark_image"
    )
    spark_version: str = _f("4.3.0", "k8s-operator: the Spark version of spark_image (its pyspark)")
    spark_namespace: str = _f("default", "k8s-operator: the namespace of the SparkApplication")
    spark_service_account: str = _f("spark", "k8s-operator: the driver's service account (creates executor pods)")
    spark_executor_instances: int = _f(2, "k8s-operator: Spark executors")
    spark_executor_cores: int = _f(2, "k8s-operator: cores per executor")
    spark_executor_memory: str = _f("4g", "k8s-operator: memory per executor")


@dataclass
class Config:
    """The whole configuration: one section per concern."""

    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "inputs and grade scale"})
    channels: ChannelsConfig = field(default_factory=ChannelsConfig, metadata={"help": "retrieval channels"})
    fusion: FusionConfig = field(
        default_factory=FusionConfig, metadata={"help": "prior, fused targets, training lists"}
    )
    training: TrainingConfig = field(
        default_factory=TrainingConfig, metadata={"help": "bi-encoder training and export"}
    )
    index: IndexConfig = field(default_factory=IndexConfig, metadata={"help": "FAISS index of the item tower"})
    evaluation: EvaluationConfig = field(
        default_factory=EvaluationConfig, metadata={"help": "offline evaluation and blessing gates"}
    )
    promotion: PromotionConfig = field(
        default_factory=PromotionConfig, metadata={"help": "model promotion and A/B config push"}
    )
    simulator: SimulatorConfig = field(
        default_factory=SimulatorConfig, metadata={"help": "sponsored-search log simulator"}
    )
    extraction: ExtractionConfig = field(
        default_factory=ExtractionConfig, metadata={"help": "log extraction: validation, bot filter, engagement"}
    )
    teachers: TeachersConfig = field(
        default_factory=TeachersConfig, metadata={"help": "teacher cascade models, training and Triton export"}
    )
    labeling: LabelingConfig = field(
        default_factory=LabelingConfig, metadata={"help": "cascade labeling of (query, item) pairs"}
    )


# ---------------------------------------------------------------- loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_YAML11_MISSED_FLOAT = re.compile(r"[-+]?\d+[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be null")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _YAML11_MISSED_FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 3e-5 (no dot in the mantissa) as a string
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, float) and value.is_integer():
        # KFP renders integer pipeline parameters inside override strings as 3.0
        value = int(value)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp in (float, str) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"{full}: unknown key; {cls.__name__} has: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix or cls.__name__}: missing required key(s): {', '.join(missing)}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as plain data (for YAML, JSON and artifact metadata)."""
    return dataclasses.asdict(config)


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without YAML's implicit timestamps, so dates stay the strings written."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_yaml(text: str | bytes) -> Any:
    """Parse configuration YAML safely; ``2024-03-06`` is a string, never a date object."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


KEEP = object()  # an override with nothing after "=": the profile's value stays


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, _, raw = item.partition("=")
    if not raw.strip():
        return key.strip().split("."), KEEP
    try:
        return key.strip().split("."), parse_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({err.problem})") from None


def _profile_text(name: str) -> str:
    return resources.files("unisup").joinpath("profiles", f"{name}.yaml").read_text()


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a profile name (``local``/``cluster``) or a YAML file, then apply overrides.

    ``overrides`` are ``section.key=value`` strings, the value parsed as YAML. Nothing after
    ``=`` keeps the profile's value (a pipeline parameter left empty); ``key=''`` sets the empty
    string.
    """
    if source is None or str(source) in PROFILES:
        name = str(source or "local")
        text, origin = _profile_text(name), f"profile {name}"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path} (profiles: {', '.join(PROFILES)})")
        text, origin = path.read_text(), str(path)
    try:
        data = parse_yaml(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections at the top level")
    for item in overrides or []:
        keys, value = _parse_override(item)
        if value is KEEP:
            continue
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    try:
        return from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf key, for ``unisup config --help``-style listings."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(hints[f.name]):
            rows.extend(describe(hints[f.name], key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
