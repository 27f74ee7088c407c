"""Pieces shared by the pipelines: config overrides built from pipeline parameters (one list
per concern, so each task's cache key holds only what it reads), the data half (logs ->
engagement -> teacher labels, labeling sharded) and the training arm (fuse -> train -> index)
that every training run uses."""

from kfp import dsl

from components import _k8s
from components.build_index import build_index
from components.extract_logs import extract_logs
from components.fuse import fuse
from components.label import label
from components.locate_logs import locate_logs
from components.shards import merge_shards, pick_shard, split_shards
from components.simulate_logs import simulate_logs
from components.train import train
from components.train_teacher import train_teacher

LABEL_TABLES = ["labels.parquet", "quarantine.parquet"]
# labeling shards in flight at once: each keeps labeling.concurrency requests on Triton, so at
# most 4 x 8 = 32 by default, whatever shard_count is
LABEL_PARALLELISM = 4


def data_overrides(catalog_uri: str, judgments_uri: str, split_uri: str) -> list:
    """``data.*``: the GCS (or local) locations of catalog, judgments and split; a value left
    empty keeps the profile's."""
    return [
        f"data.catalog_uri={catalog_uri}",
        f"data.judgments_uri={judgments_uri}",
        f"data.split_uri={split_uri}",
    ]


def fusion_overrides(preset: str, prior_weight: float, engagement_weight: float, hard_negative_weight: float) -> list:
    """``fusion.*``: the preset and the weights of the fused target."""
    return [
        f"fusion.preset={preset}",
        f"fusion.prior_weight={prior_weight}",
        f"fusion.engagement_weight={engagement_weight}",
        f"fusion.hard_negative_weight={hard_negative_weight}",
    ]


def index_overrides(factory: str, search_params: str) -> list:
    """``index.*``: the FAISS factory string and its search-time parameters (quoted, so that an
    empty value, FAISS's defaults, stays a string)."""
    return [f"index.factory={factory}", f"index.search_params='{search_params}'"]


def gate_overrides(
    baseline_preset: str, metric: str, min_delta_ci_low: float, max_grade0_increase: float, max_engagement_drop: float
) -> list:
    """``evaluation.*``: the blessing gates, against the A/B control trained with ``baseline_preset``."""
    return [
        f"evaluation.gate_metric={metric}",
        f"evaluation.gate_min_delta_ci_low={min_delta_ci_low}",
        f"evaluation.gate_max_grade0_increase={max_grade0_increase}",
        f"evaluation.gate_max_engagement_drop={max_engagement_drop}",
        f"evaluation.gate_baselines=[{baseline_preset}]",
    ]


def promotion_overrides(
    model_repository: str,
    index_root: str,
    config_root: str,
    experiment_id: str,
    treatment_traffic: float,
    control_model_uri: str,
    control_index_uri: str,
) -> list:
    """``promotion.*``: where the push writes (empty: the profile's) and the A/B experiment; the
    control URIs are quoted, so that an empty one (the control of the current A/B config) stays a string."""
    return [
        f"promotion.model_repository={model_repository}",
        f"promotion.index_root={index_root}",
        f"promotion.config_root={config_root}",
        f"promotion.experiment_id={experiment_id}",
        f"promotion.treatment_traffic={treatment_traffic}",
        f"promotion.control_model_uri='{control_model_uri}'",
        f"promotion.control_index_uri='{control_index_uri}'",
    ]


def trained_arm(
    labels,
    engagement,
    config: str,
    data: list,
    fusion: list,
    index: list,
    max_epochs: int,
    max_steps: int,
    arm: str = "",
) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """fuse -> train -> build-index for one fusion preset; each task gets only the overrides it
    reads, so changing a gate or the index re-runs nothing upstream of it. ``arm`` (e.g.
    ``baseline``) suffixes the tasks' display names. Returns the (train, build-index) tasks."""
    fused = _k8s.on_cpu(fuse(labels=labels, engagement=engagement, config=config, overrides=data + fusion), _k8s.LARGE)
    trained = _k8s.on_gpu(
        train(
            training_lists=fused.outputs["training_lists"],
            config=config,
            overrides=data + [f"training.max_steps={max_steps}"],
            max_epochs=max_epochs,
        )
    )
    indexed = _k8s.on_gpu(build_index(model=trained.outputs["model"], config=config, overrides=data + index))
    if arm:
        for task, name in ((fused, "fuse"), (trained, "train"), (indexed, "build-index")):
            task.set_display_name(f"{name}-{arm}")
    return trained, indexed


def labeled_engagement(
    config: str,
    overrides: list,
    logs_uri: str,
    log_start_date: str,
    log_end_date: str,
    log_holdout_days: int,
    extraction_engine: str,
    shard_count: int,
    labeling_backend: str,
    triton_url: str,
    max_prob_threshold: float,
    boundary_margin: float,
    escalate_rule: str,
) -> tuple:
    """Logs (simulated when ``logs_uri`` is empty) -> engagement -> teacher labels of every
    logged (query, item): extraction in one task on ``extraction_engine`` (duckdb, or spark),
    labeling over ``shard_count`` query shards. The last ``log_holdout_days`` days of the window are
    held out for evaluation.
    Returns the (engagement, held-out engagement, labels, teacher audit) artifact channels."""
    with dsl.If(logs_uri == "", name="simulate-logs"):
        simulated = _k8s.on_cpu(simulate_logs(config=config, overrides=overrides), _k8s.LARGE)
    with dsl.Else(name="read-given-logs"):
        located = _k8s.never_cached(_k8s.on_cpu(locate_logs(logs_uri=logs_uri)))
    extracted = _k8s.on_cpu(
        extract_logs(
            logs_uri=dsl.OneOf(simulated.outputs["logs_uri"], located.outputs["Output"]),
            start_date=log_start_date,
            end_date=log_end_date,
            engine=extraction_engine,
            config=config,
            overrides=overrides + [f"extraction.holdout_days={log_holdout_days}"],
        ),
        _k8s.LARGE,
    )
    engagement = extracted.outputs["engagement"]
    teachers = _k8s.on_gpu(train_teacher(config=config, overrides=overrides))
    cascade = overrides + [
        f"labeling.max_prob_threshold={max_prob_threshold}",
        f"labeling.boundary_margin={boundary_margin}",
        f"labeling.escalate_rule={escalate_rule}",
    ]
    shards = _k8s.on_cpu(split_shards(table=engagement, key_column="query", num_shards=shard_count))
    with dsl.ParallelFor(shards.outputs["Output"], name="label-shards", parallelism=LABEL_PARALLELISM) as index:
        shard = _k8s.on_cpu(pick_shard(shards=shards.outputs["shards"], index=index))
        labeled = _k8s.retried(
            _k8s.on_cpu(
                label(
                    pairs=shard.outputs["shard"],
                    teachers=teachers.outputs["teachers"],
                    config=config,
                    overrides=cascade,
                    backend=labeling_backend,
                    triton_url=triton_url,
                )
            )
        )
    merged = _k8s.on_cpu(
        merge_shards(
            parts=dsl.Collected(labeled.outputs["work"]),
            tables=LABEL_TABLES,
            main_table=LABEL_TABLES[0],
        )
    )
    return (
        engagement,
        extracted.outputs["holdout_engagement"],
        merged.outputs["merged_table"],
        teachers.outputs["audit"],
    )
