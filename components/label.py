"""KFP component of ``unisup label``: (query, item) pairs -> cascade relevance labels."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def label(
    pairs: Input[Dataset],
    teachers: Input[Model],
    labels: Output[Dataset],
    work: Output[Artifact],
    metrics: Output[Metrics],
    config: str = "local",
    overrides: list = [],
    backend: str = "",
    triton_url: str = "",
):
    """Label every pair once with the teacher cascade (schema ``labels``, one Parquet file).

    ``work`` holds the shards, manifest, quarantine and report; ``backend`` / ``triton_url``
    override ``labeling.backend`` / ``labeling.triton_url`` when not empty. The in-process
    backend loads the teachers from ``teachers``; the Triton backend uses the served ones;
    ``triton_local`` serves ``teachers`` with a tritonserver started here for the run.
    """
    import json
    import shutil
    from dataclasses import asdict

    from unisup import storage
    from unisup.config import load_config
    from unisup.teachers.labeling import LABELS_FILE, label_pairs, serving_backend

    extra = [f"labeling.backend={backend}"] * bool(backend) + [f"labeling.triton_url={triton_url}"] * bool(triton_url)
    cfg = load_config(config, list(overrides) + extra)
    with serving_backend(cfg, teachers.path) as served:
        report = label_pairs(pairs.path, work.path, cfg, served, repository=teachers.path)
    shutil.copyfile(storage.join(work.path, LABELS_FILE), labels.path)
    labels.metadata.update(
        {
            "config": config,
            "overrides": json.dumps(list(overrides) + extra),
            "rows": report["labeled"],
            "backend_used": report["backend"],
            "cascade_stages": json.dumps(report["stages"]),
            "fingerprint": report["settings"]["fingerprint"],
            **{
                k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                for k, v in asdict(cfg.labeling).items()
            },
        }
    )
    for key in ("rows_in", "labeled", "quarantined", "shards", "shards_resumed", "seconds"):
        metrics.log_metric(key, report[key])
    for name in report["stages"]:
        metrics.log_metric(f"{name}_pairs", report["pairs_per_stage"][name])
        metrics.log_metric(f"{name}_seconds", report["seconds_per_stage"][name])
