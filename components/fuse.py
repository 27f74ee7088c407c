"""KFP component of ``unisup fuse``: labels + engagement -> training lists (unisup.fusion)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def fuse(
    labels: Input[Dataset],
    engagement: Input[Dataset],
    training_lists: Output[Dataset],
    quarantine: Output[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
    config: str = "local",
    overrides: list = [],
):
    """Multichannel prior, fused targets and per-query training lists of the configured preset;
    the input rows it refuses go to ``quarantine``, each with its input, row and reason."""
    import json

    from unisup.config import load_config
    from unisup.fusion import fuse as run_fuse

    result = run_fuse(
        labels.path, engagement.path, training_lists.path, report.path, load_config(config, overrides), quarantine.path
    )
    quarantined = {f"quarantined_{name}": counts["quarantined"] for name, counts in result["inputs"].items()}
    quarantine.metadata.update(quarantined)
    parameters = {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in result["parameters"].items()
    }
    training_lists.metadata.update(
        {
            **parameters,
            "config": config,
            "overrides": json.dumps(overrides),
            "lists": result["lists"],
            "rows": result["rows"],
            **quarantined,
        }
    )
    for name in ("lists", "rows", "relevant_items", "clicked_items"):
        metrics.log_metric(name, result[name])
    for name, count in quarantined.items():
        metrics.log_metric(name, count)
    for source, count in result["items_per_source"].items():
        metrics.log_metric(f"items_{source}", count)
