"""KFP component of ``unisup train-teacher``: ordinal teachers -> Triton repository + quality audit."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Markdown, Metrics, Model, Output

from components._image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train_teacher(
    teachers: Output[Model],
    audit: Output[Metrics],
    audit_report: Output[Markdown],
    grade_confusion: Output[ClassificationMetrics],
    config: str = "local",
    overrides: list = [],
):
    """Fit or fine-tune every cascade stage on the judgments, export them as a Triton model repository
    (``teachers``, with a model card holding the audit), and audit stages and cascade against held-out
    human grades and the features-only baseline (``audit``: the JSON and its scalars; its gate reaches
    the blessing through the evaluation). The UI shows the audit table (``audit_report``) and the
    cascade's grades against the human ones on the held-out pairs (``grade_confusion``)."""
    import json
    from dataclasses import asdict

    from unisup.config import load_config
    from unisup.teachers.audit import format_audit
    from unisup.teachers.training import train_and_audit

    cfg = load_config(config, overrides)
    report, result = train_and_audit(cfg, teachers.path)
    with open(audit.path, "w") as handle:
        json.dump(result, handle, indent=1)
    with open(audit_report.path, "w") as handle:
        handle.write(format_audit(result))
    grades = [f"grade {g}" for g in range(cfg.data.num_grades)]
    grade_confusion.log_confusion_matrix(grades, result["cascade"]["confusion"])
    teachers.metadata.update(
        {
            "config": config,
            "overrides": json.dumps(overrides),
            "num_grades": cfg.data.num_grades,
            "stages": json.dumps([asdict(s) for s in cfg.teachers.stages]),
            "class_weight_power": cfg.teachers.class_weight_power,
            "seed": cfg.teachers.seed,
            "max_train_pairs": cfg.teachers.max_train_pairs,
            "training_seconds": report["seconds"],
            "escalation": json.dumps(report["escalation"]),
            **{f"{name}_steps": r["steps"] for name, r in report["stages"].items()},
            **{f"{name}_temperature": r["temperature"] for name, r in report["stages"].items()},
            **{f"{name}_stop_reason": r["stop_reason"] for name, r in report["stages"].items()},
            **{f"{name}_cut_by_time": r["cut_by_time"] for name, r in report["stages"].items()},
            "audit_failures": json.dumps(result["gate"]["failures"]),
            "audit_warnings": json.dumps(result["warnings"]),
        }
    )
    for who, stats in [
        *result["stages"].items(),
        ("cascade", result["cascade"]),
        ("features_baseline", result["features_baseline"]),
        ("raters", result["raters"].get("mean", {})),
    ]:
        for key in ("exact", "within_one", "qwk", "condensed_ndcg@10"):
            if stats.get(key) is not None:
                audit.log_metric(f"{who}_{key.replace('@', '_at_')}", stats[key])
    audit.log_metric("audit_passed", float(result["gate"]["passed"]))
