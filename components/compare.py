"""KFP component that puts several evaluations side by side (unisup.ablation)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def compare_runs(
    results: Input[list[Artifact]],
    table: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    name_key: str = "fusion.preset",
):
    """One row per run's candidate (named by ``name_key`` in the overrides recorded in each
    results artifact's metadata) and per baseline, one column per metric."""
    import json

    from unisup.ablation import compare_runs as run_compare
    from unisup.ablation import run_name

    names = [
        run_name(json.loads(r.metadata.get("overrides", "[]")), name_key, default=f"run-{i}")
        for i, r in enumerate(results)
    ]
    compared = run_compare([r.path for r in results], names, table.path, report.path)
    table.metadata.update(
        {
            "runs": json.dumps(names),
            "name_key": name_key,
            "metrics": json.dumps(compared.column_names[1:]),
        }
    )
    for row in compared.to_pylist():
        for metric, value in row.items():
            if metric != "system" and value is not None:
                metrics.log_metric(f"{row['system']}_{metric}".replace("@", "_at_"), value)
