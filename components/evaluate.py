"""KFP component of ``unisup evaluate``: candidate vs baselines, report and blessing (unisup.evaluation)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def evaluate(
    candidate_model: Input[Model],
    candidate_index: Input[Artifact],
    results: Output[Dataset],
    results_json: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    report_html: Output[Artifact],
    blessing: Output[Artifact],
    baseline_model: Input[Model] = None,
    baseline_index: Input[Artifact] = None,
    engagement: Input[Dataset] = None,
    teacher_audit: Input[Metrics] = None,
    baseline_name: str = "off_the_shelf",
    judgments_uri: str = "",
    split: str = "",
    config: str = "local",
    overrides: list = [],
    run_id: str = "",
) -> bool:
    """Evaluate the candidate (model + index) against the optional model baseline and the
    configured channel baselines (BM25) on judged queries and held-out engagement; returns
    the blessing (``task.outputs["Output"]``, for ``dsl.If``; kfp.local resolves a single
    return value in a condition, not a NamedTuple field). ``report`` is the page for the Kubeflow
    UI; ``report_html`` a folder with the same page as ``report.html``, for a browser. ``run_id``
    (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) is named in the report."""
    import json
    import os
    import shutil

    from unisup.config import load_config, to_dict
    from unisup.evaluation import REPORT_FILE, kfp_metrics, run_evaluation, write_outputs

    cfg = load_config(config, overrides)
    model_baselines = []
    if baseline_model is not None and baseline_index is not None:
        model_baselines.append((baseline_name, baseline_model.path, baseline_index.path))
    result = run_evaluation(
        cfg,
        candidate_model.path,
        candidate_index.path,
        None,
        model_baselines,
        judgments_uri or None,
        split or None,
        engagement.path if engagement is not None else None,
        teacher_audit.path if teacher_audit is not None else None,
        provenance={"config": config, "overrides": list(overrides), "run_id": run_id},
    )
    write_outputs(
        result, {"results": results.path, "json": results_json.path, "report": report.path, "blessing": blessing.path}
    )
    os.makedirs(report_html.path, exist_ok=True)
    shutil.copyfile(report.path, os.path.join(report_html.path, REPORT_FILE))
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name.replace("@", "_at_"), value)
    parameters = {
        "config": config,
        "overrides": json.dumps(overrides),
        "evaluation": json.dumps(to_dict(cfg.evaluation)),
        "split": result.settings["split"],
        "judgments_uri": result.settings["judgments_uri"],
        "systems": json.dumps(result.systems),
        "blessed": result.blessing["blessed"],
    }
    for artifact in (results, results_json, report, report_html, blessing):
        artifact.metadata.update(parameters)
    blessing.metadata["reasons"] = json.dumps(result.blessing["reasons"])
    return bool(result.blessing["blessed"])
