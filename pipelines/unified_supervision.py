"""The unified_supervision pipeline: logs -> engagement -> teacher labels (sharded) -> fused
targets -> bi-encoder -> FAISS index -> evaluation -> gated A/B push.

The candidate is evaluated against the control, a bi-encoder trained on the same logs and
budget with ``baseline_preset`` (engagement_only: clicks as positives, today's practice),
and against the configured channel baselines (BM25, off-the-shelf MiniLM), on the human
judgments and on the engagement of the last ``log_holdout_days`` days of the log window,
which training never sees.

Every tunable is a pipeline parameter (the Kubeflow UI shows them); anything else comes
from ``config``, a profile name (``local``, ``cluster``) or a YAML file readable by the
components. Leave ``logs_uri`` empty to simulate logs from the catalog and split.
"""

from kfp import dsl

from components import _k8s
from components.build_index import build_index
from components.evaluate import evaluate
from components.fuse import fuse
from components.push import push
from components.train import train
from pipelines._stages import data_overrides, index_overrides, labeled_engagement


def training_overrides(
    fusion_preset: str,
    prior_weight: float,
    engagement_weight: float,
    hard_negative_weight: float,
    max_epochs: int,
    max_steps: int,
    faiss_factory: str,
    faiss_search_params: str,
    gate_metric: str,
    gate_min_delta_ci_low: float,
    gate_max_grade0_increase: float,
    gate_max_engagement_drop: float,
) -> list:
    """Overrides of the fusion preset and weights, the training budget, the index and the gates."""
    return [
        f"fusion.preset={fusion_preset}",
        f"fusion.prior_weight={prior_weight}",
        f"fusion.engagement_weight={engagement_weight}",
        f"fusion.hard_negative_weight={hard_negative_weight}",
        f"training.max_epochs={max_epochs}",
        f"training.max_steps={max_steps}",
        *index_overrides(faiss_factory, faiss_search_params),
        f"evaluation.gate_metric={gate_metric}",
        f"evaluation.gate_min_delta_ci_low={gate_min_delta_ci_low}",
        f"evaluation.gate_max_grade0_increase={gate_max_grade0_increase}",
        f"evaluation.gate_max_engagement_drop={gate_max_engagement_drop}",
    ]


@dsl.pipeline(name="unified-supervision", description=__doc__.splitlines()[0])
def unified_supervision(
    config: str = "local",
    catalog_uri: str = "data/sample/products.parquet",
    judgments_uri: str = "data/sample/judgments.csv",
    split_uri: str = "data/sample/split.json",
    logs_uri: str = "",
    log_start_date: str = "",
    log_end_date: str = "",
    log_holdout_days: int = 1,
    extraction_engine: str = "duckdb",
    shard_count: int = 2,
    labeling_backend: str = "triton",
    triton_url: str = "localhost:8001",
    max_prob_threshold: float = 0.7,
    boundary_margin: float = 0.3,
    escalate_rule: str = "calibrated",
    fusion_preset: str = "unified",
    baseline_preset: str = "engagement_only",
    prior_weight: float = 0.5,
    engagement_weight: float = 1.0,
    hard_negative_weight: float = 1.0,
    max_epochs: int = 6,
    max_steps: int = 0,
    faiss_factory: str = "HNSW32",
    faiss_search_params: str = "efSearch=128",
    gate_metric: str = "ndcg@10",
    gate_min_delta_ci_low: float = 0.0,
    gate_max_grade0_increase: float = 0.0,
    gate_max_engagement_drop: float = 0.05,
    serving_model_repository: str = "serving/triton_models",
    serving_index_root: str = "serving/indexes",
    experiment_config_root: str = "serving/experiments",
    experiment_id: str = "unisup-retrieval",
    treatment_traffic: float = 0.1,
    control_model_uri: str = "",
    control_index_uri: str = "",
):
    common = data_overrides(catalog_uri, judgments_uri, split_uri)
    engagement, holdout_engagement, labels, teacher_audit = labeled_engagement(
        config,
        common,
        logs_uri,
        log_start_date,
        log_end_date,
        log_holdout_days,
        extraction_engine,
        shard_count,
        labeling_backend,
        triton_url,
        max_prob_threshold,
        boundary_margin,
        escalate_rule,
    )
    overrides = common + training_overrides(
        fusion_preset,
        prior_weight,
        engagement_weight,
        hard_negative_weight,
        max_epochs,
        max_steps,
        faiss_factory,
        faiss_search_params,
        gate_metric,
        gate_min_delta_ci_low,
        gate_max_grade0_increase,
        gate_max_engagement_drop,
    )
    fused = _k8s.on_cpu(fuse(labels=labels, engagement=engagement, config=config, overrides=overrides), _k8s.LARGE)
    trained = _k8s.on_gpu(train(training_lists=fused.outputs["training_lists"], config=config, overrides=overrides))
    index = _k8s.on_gpu(build_index(model=trained.outputs["model"], config=config, overrides=overrides))
    # the control: the same data and budget trained the way production does today
    control_overrides = overrides + [f"fusion.preset={baseline_preset}"]
    control_fused = _k8s.on_cpu(
        fuse(labels=labels, engagement=engagement, config=config, overrides=control_overrides),
        _k8s.LARGE,
    ).set_display_name("fuse-baseline")
    control_trained = _k8s.on_gpu(
        train(training_lists=control_fused.outputs["training_lists"], config=config, overrides=control_overrides)
    ).set_display_name("train-baseline")
    control_index = _k8s.on_gpu(
        build_index(model=control_trained.outputs["model"], config=config, overrides=control_overrides)
    ).set_display_name("build-index-baseline")
    # the gates compare with the A/B control, the baseline_preset model of this run; the push
    # re-derives them from the evaluation results with the same settings
    gate_overrides = overrides + [f"evaluation.gate_baselines=[{baseline_preset}]"]
    evaluated = _k8s.on_cpu(
        evaluate(
            candidate_model=trained.outputs["model"],
            candidate_index=index.outputs["index"],
            baseline_model=control_trained.outputs["model"],
            baseline_index=control_index.outputs["index"],
            baseline_name=baseline_preset,
            engagement=holdout_engagement,
            teacher_audit=teacher_audit,
            config=config,
            overrides=gate_overrides,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ),
        _k8s.LARGE,
    )
    push_overrides = gate_overrides + [
        f"promotion.model_repository={serving_model_repository}",
        f"promotion.index_root={serving_index_root}",
        f"promotion.config_root={experiment_config_root}",
        f"promotion.experiment_id={experiment_id}",
        f"promotion.treatment_traffic={treatment_traffic}",
        # quoted: an empty URI (take the control of the current A/B config) stays a string
        f"promotion.control_model_uri='{control_model_uri}'",
        f"promotion.control_index_uri='{control_index_uri}'",
    ]
    with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a KFP condition)
        _k8s.never_cached(
            _k8s.on_cpu(
                push(
                    blessing=evaluated.outputs["blessing"],
                    model=trained.outputs["model"],
                    index=index.outputs["index"],
                    config=config,
                    overrides=push_overrides,
                )
            )
        )
