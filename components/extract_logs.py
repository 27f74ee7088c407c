"""KFP component of ``unisup extract-logs``: raw logs -> engagement, held-out engagement,
quarantine and report (unisup.logs), on the engine the ``engine`` parameter names: DuckDB,
or Spark: ``local[N]`` inside the task, or with ``extraction.spark_submit=k8s-operator`` a
SparkApplication that the task creates and waits for (unisup.spark_operator)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def extract_logs(
    engagement: Output[Dataset],
    holdout_engagement: Output[Dataset],
    quarantine: Output[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
    logs_uri: str = "",
    start_date: str = "",
    end_date: str = "",
    engine: str = "duckdb",
    config: str = "local",
    overrides: list = [],  # noqa: B006 (KFP reads the default; it is never mutated)
):
    """Validate the partitioned raw logs at ``logs_uri`` (empty = the config's) for a date
    window, filter bots and write per (query, item) engagement of the training window and of
    its held-out last ``extraction.holdout_days`` days (an empty table without a hold-out)."""
    import json

    from unisup.config import load_config
    from unisup.logs import extract_logs_with_holdout
    from unisup.spark_operator import extract_on_cluster

    overrides = overrides + [f"extraction.engine={engine}"]
    cfg = load_config(config, overrides)
    if cfg.extraction.engine == "spark" and cfg.extraction.spark_submit == "k8s-operator":
        window = [f"extraction.start_date={start_date}"] * bool(start_date) + [
            f"extraction.end_date={end_date}"
        ] * bool(end_date)
        outputs = (engagement.uri, holdout_engagement.uri, quarantine.uri, report.uri)
        result, held_out = extract_on_cluster(
            cfg.extraction, logs_uri or cfg.extraction.logs_uri, *outputs, config, overrides + window
        )
    else:
        result, held_out = extract_logs_with_holdout(
            logs_uri or cfg.extraction.logs_uri,
            engagement.path,
            holdout_engagement.path,
            cfg.extraction,
            cfg.data.catalog_uri,
            quarantine_uri=quarantine.path,
            report_uri=report.path,
            start_date=start_date or None,
            end_date=end_date or None,
        )
    held_out = held_out or {"window": None, "pairs": 0, "rows_in": 0, "rows_quarantined": 0}
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
        "rows_used",
        "pairs",
        "impressions",
        "clicks",
        "conversions",
        "rows_per_second",
    ):
        metrics.log_metric(name, result[name])
