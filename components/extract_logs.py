"""KFP components of the sharded log extraction: raw logs -> engagement + quarantine
(unisup.log_shards). A plan, then three rounds of one map per shard (``dsl.ParallelFor``)
and a reduce each; the first two reduces run one task per hash bucket and a gather, the
last writes what ``unisup extract-logs`` writes."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def plan_log_shards(
    plan: Output[Artifact],
    logs_uri: str = "",
    start_date: str = "",
    end_date: str = "",
    num_shards: int = 2,
    config: str = "local",
    overrides: list = [],  # noqa: B006 (KFP reads the default; it is never mutated)
) -> list:
    """Fix the files of the window at ``logs_uri`` (empty = the config's) and of its held-out
    last ``extraction.holdout_days`` days, cut into ``num_shards`` shards; returns the shard
    indices to fan out over."""
    from unisup.config import load_config
    from unisup.log_shards import plan_extraction, write_plan

    cfg = load_config(config, overrides)
    made = plan_extraction(
        logs_uri or cfg.extraction.logs_uri,
        cfg.extraction,
        cfg.data.catalog_uri,
        num_shards,
        start_date or None,
        end_date or None,
    )
    write_plan(made, plan.path)
    plan.metadata.update(
        {
            "num_shards": num_shards,
            **{f"{w['name']}_window": w["window"] for w in made["windows"]},
            **{f"{w['name']}_files": len(w["files"]) for w in made["windows"]},
        }
    )
    return list(range(num_shards))


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def scan_log_shard(plan: Input[Artifact], index: int, scan: Output[Artifact]):
    """Round 1 map: per event id of the shard's rows, its count and first row."""
    from unisup.log_shards import read_plan, scan_shard

    record = scan_shard(read_plan(plan.path), index, scan.path)
    scan.metadata.update({"shard": index, "seconds": record["seconds"]})


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def list_log_parts(parts: Input[list[Artifact]], listed: Output[Artifact]):
    """The locations of one round's shard outputs, for the per-bucket tasks, which read only
    their bucket of each (a loop cannot take the collected outputs of another loop)."""
    import json

    from unisup import storage

    storage.write_text(listed.path, json.dumps([part.uri for part in parts]))
    listed.metadata["parts"] = len(parts)


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def find_duplicate_events(plan: Input[Artifact], scans: Input[Artifact], bucket: int, duplicates: Output[Artifact]):
    """Round 1 reduce, one task per bucket: the event ids of the bucket that occur more than
    once in a window, over all shards."""
    import json

    from unisup import storage
    from unisup.log_shards import find_duplicates, read_plan

    located = json.loads(storage.read_text(scans.path))
    record = find_duplicates(read_plan(plan.path), located, bucket, duplicates.path)
    duplicates.metadata.update(
        {
            "bucket": bucket,
            **{f"{n}_duplicated_event_ids": w["duplicated_event_ids"] for n, w in record["windows"].items()},
        }
    )


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def gather_duplicate_events(plan: Input[Artifact], buckets: Input[list[Artifact]], duplicates: Output[Artifact]):
    """The duplicated event ids of every bucket, for the validation and aggregation rounds."""
    from unisup.log_shards import gather_duplicates, read_plan

    record = gather_duplicates(read_plan(plan.path), [b.path for b in buckets], duplicates.path)
    duplicates.metadata.update(
        {f"{name}_duplicated_event_ids": w["duplicated_event_ids"] for name, w in record["windows"].items()}
    )


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def validate_log_shard(plan: Input[Artifact], index: int, duplicates: Input[Artifact], validated: Output[Artifact]):
    """Round 2 map: the shard's quarantine and the per-request statistics of its accepted rows."""
    from unisup.log_shards import read_plan, validate_shard

    record = validate_shard(read_plan(plan.path), index, duplicates.path, validated.path)
    rows = sum(w["rows_in"] for w in record["windows"].values())
    validated.metadata.update({"shard": index, "rows_in": rows, "seconds": record["seconds"]})


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def find_bot_users(plan: Input[Artifact], validated: Input[Artifact], bucket: int, bots: Output[Artifact]):
    """Round 2 reduce, one task per bucket of users: the users the bot rules flag, from their
    requests in every shard."""
    import json

    from unisup import storage
    from unisup.log_shards import find_bots, read_plan

    located = json.loads(storage.read_text(validated.path))
    record = find_bots(read_plan(plan.path), located, bucket, bots.path)
    bots.metadata.update({"bucket": bucket, **{f"{n}_bot_users": w["bot_users"] for n, w in record["windows"].items()}})


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def gather_bot_users(plan: Input[Artifact], buckets: Input[list[Artifact]], bots: Output[Artifact]):
    """The bot users of every bucket, for the aggregation round."""
    from unisup.log_shards import gather_bots, read_plan

    record = gather_bots(read_plan(plan.path), [b.path for b in buckets], bots.path)
    bots.metadata.update({f"{name}_bot_users": w["bot_users"] for name, w in record["windows"].items()})


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def aggregate_log_shard(
    plan: Input[Artifact],
    index: int,
    duplicates: Input[Artifact],
    bots: Input[Artifact],
    aggregated: Output[Artifact],
):
    """Round 3 map: per (query, item, slot) statistics of the shard's rows used."""
    from unisup.log_shards import aggregate_shard, read_plan

    record = aggregate_shard(read_plan(plan.path), index, duplicates.path, bots.path, aggregated.path)
    aggregated.metadata.update({"shard": index, "seconds": record["seconds"]})


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def merge_log_shards(
    plan: Input[Artifact],
    duplicates: Input[Artifact],
    bots: Input[Artifact],
    scans: Input[list[Artifact]],
    validated: Input[list[Artifact]],
    aggregated: Input[list[Artifact]],
    engagement: Output[Dataset],
    holdout_engagement: Output[Dataset],
    quarantine: Output[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
):
    """Round 3 reduce: propensities, Beta priors and per (query, item) engagement of the
    training window (``engagement``) and of the held-out days (``holdout_engagement``, the
    engagement the evaluation judges on; an empty table without a hold-out), the quarantine
    in file and row order, and the report."""
    import json

    from unisup.log_shards import HOLDOUT, TRAINING, merge_extraction, read_plan
    from unisup.logs import write_empty_like

    made = read_plan(plan.path)
    outputs = {
        TRAINING: (engagement.path, quarantine.path, report.path),
        HOLDOUT: (holdout_engagement.path, None, None),
    }
    reports = merge_extraction(
        made,
        duplicates.path,
        bots.path,
        [v.path for v in validated],
        [a.path for a in aggregated],
        outputs,
        [s.path for s in scans],
    )
    result, held_out = reports[TRAINING], reports.get(HOLDOUT)
    if held_out is None:
        write_empty_like(engagement.path, holdout_engagement.path)
        held_out = {"window": None, "pairs": 0, "rows_in": 0, "rows_quarantined": 0}
    holdout_engagement.metadata.update(
        {"window": json.dumps(held_out["window"]), **{k: held_out[k] for k in ("pairs", "rows_in", "rows_quarantined")}}
    )
    parameters = {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in result["config"].items()
    }
    engagement.metadata.update(
        {
            **parameters,
            "logs_uri": result["logs_uri"],
            "window": json.dumps(result["window"]),
            "channels": json.dumps(result["channels"]),
            "propensities": json.dumps(result["propensities"]),
            "pairs": result["pairs"],
            "shards": result["shards"],
        }
    )
    quarantine.metadata.update(
        {"rows": result["rows_quarantined"], "by_reason": json.dumps(result["quarantined_by_reason"])}
    )
    for name in (
        "rows_in",
        "rows_accepted",
        "rows_quarantined",
        "rows_bot_filtered",
        "bot_users",
        "duplicated_event_ids",
        "rows_used",
        "pairs",
        "impressions",
        "clicks",
        "conversions",
        "rows_per_second",
    ):
        metrics.log_metric(name, result[name])
