"""KFP component of ``unisup data simulate-logs``: the bundled sample -> simulated raw logs
(unisup.simulator). Used by the pipelines when no real logs are given."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def simulate_logs(
    logs: Output[Dataset],
    metrics: Output[Metrics],
    config: str = "local",
    overrides: list = [],  # noqa: B006 (KFP reads the default; it is never mutated)
) -> NamedTuple("Outputs", [("logs_uri", str)]):
    """Simulate ``simulator.num_days`` days of sponsored-search logs over the configured
    catalog and split into ``logs`` (``date=YYYY-MM-DD/part-*.parquet``); returns the
    artifact's URI for stages that take a logs location."""
    import json
    from collections import namedtuple

    from unisup.config import load_config, to_dict
    from unisup.simulator import simulate_configured_logs

    cfg = load_config(config, overrides)
    summary = simulate_configured_logs(cfg, logs.path, progress=True)
    logs.metadata.update(
        {
            "config": config,
            "overrides": json.dumps(overrides),
            "simulator": json.dumps(to_dict(cfg.simulator)),
            "dates": json.dumps(summary["dates"]),
            "requests": summary["requests"],
            "rows": summary["rows"],
        }
    )
    for name in (
        "requests",
        "bot_requests",
        "rows",
        "impressions",
        "clicks",
        "conversions",
        "distinct_queries",
    ):
        metrics.log_metric(name, summary[name])
    return namedtuple("Outputs", ["logs_uri"])(logs.uri)
