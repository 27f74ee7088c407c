"""Pieces shared by the pipelines: config overrides built from pipeline parameters, and
the data half (logs -> engagement -> teacher labels, sharded) that every training run uses."""

from kfp import dsl

from components import _k8s
from components.extract_logs import (
    aggregate_log_shard,
    find_bot_users,
    find_duplicate_events,
    gather_bot_users,
    gather_duplicate_events,
    list_log_parts,
    merge_log_shards,
    plan_log_shards,
    scan_log_shard,
    validate_log_shard,
)
from components.label import label
from components.locate_logs import locate_logs
from components.shards import merge_shards, pick_shard, split_shards
from components.simulate_logs import simulate_logs
from components.train_teacher import train_teacher

LABEL_TABLES = ["labels.parquet", "quarantine.parquet"]


def data_overrides(catalog_uri: str, judgments_uri: str, split_uri: str) -> list:
    """``data.*`` overrides: the GCS (or local) locations of catalog, judgments and split."""
    return [
        f"data.catalog_uri={catalog_uri}",
        f"data.judgments_uri={judgments_uri}",
        f"data.split_uri={split_uri}",
    ]


def index_overrides(factory: str, search_params: str) -> list:
    """``index.*`` overrides: the FAISS factory string and its search-time parameters
    (quoted, so that an empty value, FAISS's defaults, stays a string)."""
    return [f"index.factory={factory}", f"index.search_params='{search_params}'"]


def sharded_extraction(
    logs_uri, start_date: str, end_date: str, num_shards: int, config: str, overrides: list
) -> dsl.PipelineTask:
    """The log extraction over ``num_shards`` file shards: a plan, then scan, validate and
    aggregate rounds each fanned out with ``dsl.ParallelFor`` and merged by a reduce; the first
    two reduces are themselves fanned out, over event-id and user buckets (unisup.log_shards).
    Returns the last reduce, with the engagement outputs."""
    planned = _k8s.on_cpu(
        plan_log_shards(
            logs_uri=logs_uri,
            start_date=start_date,
            end_date=end_date,
            num_shards=num_shards,
            config=config,
            overrides=overrides,
        )
    )
    plan = planned.outputs["plan"]
    with dsl.ParallelFor(planned.outputs["Output"], name="scan-log-shards") as index:
        scanned = _k8s.on_cpu(scan_log_shard(plan=plan, index=index))
    listed = _k8s.on_cpu(list_log_parts(parts=dsl.Collected(scanned.outputs["scan"]))).set_display_name(
        "list-log-scans"
    )
    with dsl.ParallelFor(planned.outputs["Output"], name="find-duplicates-by-bucket") as bucket:
        found = _k8s.on_cpu(find_duplicate_events(plan=plan, scans=listed.outputs["listed"], bucket=bucket))
    duplicates = _k8s.on_cpu(gather_duplicate_events(plan=plan, buckets=dsl.Collected(found.outputs["duplicates"])))
    with dsl.ParallelFor(planned.outputs["Output"], name="validate-log-shards") as index:
        validated = _k8s.on_cpu(
            validate_log_shard(plan=plan, index=index, duplicates=duplicates.outputs["duplicates"]), _k8s.LARGE
        )
    listed = _k8s.on_cpu(list_log_parts(parts=dsl.Collected(validated.outputs["validated"]))).set_display_name(
        "list-log-validations"
    )
    with dsl.ParallelFor(planned.outputs["Output"], name="find-bots-by-bucket") as bucket:
        flagged = _k8s.on_cpu(find_bot_users(plan=plan, validated=listed.outputs["listed"], bucket=bucket))
    bots = _k8s.on_cpu(gather_bot_users(plan=plan, buckets=dsl.Collected(flagged.outputs["bots"])))
    with dsl.ParallelFor(planned.outputs["Output"], name="aggregate-log-shards") as index:
        aggregated = _k8s.on_cpu(
            aggregate_log_shard(
                plan=plan, index=index, duplicates=duplicates.outputs["duplicates"], bots=bots.outputs["bots"]
            ),
            _k8s.LARGE,
        )
    return _k8s.on_cpu(
        merge_log_shards(
            plan=plan,
            duplicates=duplicates.outputs["duplicates"],
            bots=bots.outputs["bots"],
            scans=dsl.Collected(scanned.outputs["scan"]),
            validated=dsl.Collected(validated.outputs["validated"]),
            aggregated=dsl.Collected(aggregated.outputs["aggregated"]),
        ),
        _k8s.LARGE,
    )


def labeled_engagement(
    config: str,
    overrides: list,
    logs_uri: str,
    log_start_date: str,
    log_end_date: str,
    log_holdout_days: int,
    log_shard_count: int,
    shard_count: int,
    labeling_backend: str,
    triton_url: str,
    max_prob_threshold: float,
    boundary_margin: float,
    escalate_rule: str,
) -> tuple:
    """Logs (simulated when ``logs_uri`` is empty) -> engagement -> teacher labels of every
    logged (query, item): extraction fanned out over ``log_shard_count`` file shards, labeling
    over ``shard_count`` query shards. The last ``log_holdout_days`` days of the window are
    held out for evaluation.
    Returns the (engagement, held-out engagement, labels, teacher audit) artifact channels."""
    with dsl.If(logs_uri == "", name="simulate-logs"):
        simulated = _k8s.on_cpu(simulate_logs(config=config, overrides=overrides), _k8s.LARGE)
    with dsl.Else(name="read-given-logs"):
        located = _k8s.on_cpu(locate_logs(logs_uri=logs_uri))
    extracted = sharded_extraction(
        dsl.OneOf(simulated.outputs["logs_uri"], located.outputs["Output"]),
        log_start_date,
        log_end_date,
        log_shard_count,
        config,
        overrides + [f"extraction.holdout_days={log_holdout_days}"],
    )
    engagement = extracted.outputs["engagement"]
    teachers = _k8s.on_gpu(train_teacher(config=config, overrides=overrides))
    cascade = overrides + [
        f"labeling.max_prob_threshold={max_prob_threshold}",
        f"labeling.boundary_margin={boundary_margin}",
        f"labeling.escalate_rule={escalate_rule}",
    ]
    shards = _k8s.on_cpu(split_shards(table=engagement, key_column="query", num_shards=shard_count))
    with dsl.ParallelFor(shards.outputs["Output"], name="label-shards") as index:
        shard = _k8s.on_cpu(pick_shard(shards=shards.outputs["shards"], index=index))
        labeled = _k8s.on_cpu(
            label(
                pairs=shard.outputs["shard"],
                teachers=teachers.outputs["teachers"],
                config=config,
                overrides=cascade,
                backend=labeling_backend,
                triton_url=triton_url,
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
