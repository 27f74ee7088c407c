"""The unified_supervision pipeline: logs -> engagement -> teacher labels (sharded) -> fused
targets -> bi-encoder -> FAISS index -> evaluation -> gated A/B push.

The candidate is evaluated against the control, a bi-encoder trained on the same logs and
budget with ``baseline_preset`` (engagement_only: clicks as positives, today's practice),
and against the configured channel baselines (BM25, off-the-shelf MiniLM), on the human
judgments and on the engagement of the last ``log_holdout_days`` days of the log window,
which training never sees.

Every tunable is a pipeline parameter (the Kubeflow UI shows them with their descriptions);
anything else comes from ``config``. A text parameter left empty takes the profile's value;
numbers default to the configuration's defaults, which no shipped profile changes.
"""

from kfp import dsl

from components import _k8s
from components.evaluate import evaluate
from components.push import push
from pipelines._stages import (
    data_overrides,
    fusion_overrides,
    gate_overrides,
    index_overrides,
    labeled_engagement,
    promotion_overrides,
    trained_arm,
)
from unisup.config import Config

DEFAULTS = Config()


# Longer than 80 lines by design: KFP takes the pipeline's parameters from this signature and
# their descriptions (shown in the UI) from the docstring; the body only wires the stages.
@dsl.pipeline(name="unified-supervision")
def unified_supervision(
    config: str = "local",
    catalog_uri: str = "",
    judgments_uri: str = "",
    split_uri: str = "",
    logs_uri: str = "",
    log_start_date: str = "",
    log_end_date: str = "",
    log_holdout_days: int = 1,
    extraction_engine: str = "",
    shard_count: int = 2,
    labeling_backend: str = "",
    triton_url: str = "",
    max_prob_threshold: float = DEFAULTS.labeling.max_prob_threshold,
    boundary_margin: float = DEFAULTS.labeling.boundary_margin,
    escalate_rule: str = DEFAULTS.labeling.escalate_rule,
    fusion_preset: str = DEFAULTS.fusion.preset,
    baseline_preset: str = "engagement_only",
    prior_weight: float = DEFAULTS.fusion.prior_weight,
    engagement_weight: float = DEFAULTS.fusion.engagement_weight,
    hard_negative_weight: float = DEFAULTS.fusion.hard_negative_weight,
    max_epochs: int = 0,
    max_steps: int = DEFAULTS.training.max_steps,
    faiss_factory: str = DEFAULTS.index.factory,
    faiss_search_params: str = DEFAULTS.index.search_params,
    gate_metric: str = DEFAULTS.evaluation.gate_metric,
    gate_min_delta_ci_low: float = DEFAULTS.evaluation.gate_min_delta_ci_low,
    gate_max_grade0_increase: float = DEFAULTS.evaluation.gate_max_grade0_increase,
    gate_max_engagement_drop: float = DEFAULTS.evaluation.gate_max_engagement_drop,
    serving_model_repository: str = "",
    serving_index_root: str = "",
    experiment_config_root: str = "",
    experiment_id: str = DEFAULTS.promotion.experiment_id,
    treatment_traffic: float = DEFAULTS.promotion.treatment_traffic,
    control_model_uri: str = "",
    control_index_uri: str = "",
):
    """Trains a retriever on unified supervision and pushes it to an A/B test when it beats the engagement-only control.

    Args:
        config: Configuration profile (local, quality, cluster) or the path of a YAML file readable by the components.
        catalog_uri: Product catalog (Parquet); empty takes the profile's data.catalog_uri.
        judgments_uri: Human relevance judgments (CSV); empty takes the profile's.
        split_uri: Train/validation/test query split (JSON); empty takes the profile's.
        logs_uri: Folder of sponsored-search logs (Parquet); empty simulates logs from the catalog and split.
        log_start_date: First log day YYYY-MM-DD; empty takes extraction.start_date.
        log_end_date: Last log day YYYY-MM-DD; empty takes extraction.end_date.
        log_holdout_days: Last days of the window held out for the engagement evaluation; training never sees them.
        extraction_engine: duckdb (one node) or spark; empty takes extraction.engine.
        shard_count: Query shards the labeling fans out over.
        labeling_backend: triton (a served cascade), triton_local or inprocess; empty takes labeling.backend.
        triton_url: gRPC address of the teachers' Triton server; empty takes labeling.triton_url.
        max_prob_threshold: The cascade escalates a pair whose top grade probability is below this.
        boundary_margin: The cascade escalates a pair whose expected grade is this close to the relevance boundary.
        escalate_rule: calibrated (the thresholds above) or share (a fixed share of the pairs).
        fusion_preset: How the candidate's target is fused: unified, relevance_only, unified_no_prior, ...
        baseline_preset: The A/B control's preset, trained on the same data and budget.
        prior_weight: Weight of the multichannel retrieval prior in the fused target.
        engagement_weight: Weight of engagement, applied only to relevant items.
        hard_negative_weight: Penalty on the prior of items the teachers grade below relevant.
        max_epochs: Epochs per bi-encoder; 0 takes training.max_epochs of the profile.
        max_steps: Optimizer steps per bi-encoder; 0 means no cap.
        faiss_factory: FAISS index factory string (HNSW32, IVF1024,Flat, Flat, ...).
        faiss_search_params: FAISS search-time parameters (efSearch=128, nprobe=16); empty uses FAISS's defaults.
        gate_metric: Metric the blessing gate compares, candidate against control.
        gate_min_delta_ci_low: The 95% CI of the paired delta on gate_metric must start above this.
        gate_max_grade0_increase: Largest allowed rise of the grade-0 share in the top 10.
        gate_max_engagement_drop: Largest allowed relative drop of engagement recall on held-out days.
        serving_model_repository: Triton model repository the query encoder is pushed to; empty takes the profile's.
        serving_index_root: Where the FAISS index is pushed; empty takes the profile's.
        experiment_config_root: Where the versioned A/B experiment configs are written; empty takes the profile's.
        experiment_id: Name of the A/B experiment.
        treatment_traffic: Share of traffic the new model gets in the A/B config.
        control_model_uri: Query encoder of the A/B control; empty keeps the current config's control.
        control_index_uri: Index of the A/B control; empty keeps the current config's control.
    """
    data = data_overrides(catalog_uri, judgments_uri, split_uri)
    engagement, holdout_engagement, labels, teacher_audit = labeled_engagement(
        config,
        data,
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
    fusion = fusion_overrides(fusion_preset, prior_weight, engagement_weight, hard_negative_weight)
    index = index_overrides(faiss_factory, faiss_search_params)
    trained, indexed = trained_arm(labels, engagement, config, data, fusion, index, max_epochs, max_steps)
    # the control: the same data and budget trained the way production does today
    control_trained, control_indexed = trained_arm(
        labels,
        engagement,
        config,
        data,
        fusion + [f"fusion.preset={baseline_preset}"],
        index,
        max_epochs,
        max_steps,
        arm="baseline",
    )
    # the gates compare with the A/B control, the baseline_preset model of this run; the push
    # re-derives them from the evaluation results with the same settings
    gates = gate_overrides(
        baseline_preset, gate_metric, gate_min_delta_ci_low, gate_max_grade0_increase, gate_max_engagement_drop
    )
    evaluated = _k8s.on_cpu(
        evaluate(
            candidate_model=trained.outputs["model"],
            candidate_index=indexed.outputs["index"],
            baseline_model=control_trained.outputs["model"],
            baseline_index=control_indexed.outputs["index"],
            baseline_name=baseline_preset,
            engagement=holdout_engagement,
            teacher_audit=teacher_audit,
            config=config,
            overrides=data + index + [f"fusion.preset={fusion_preset}"] + gates,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ),
        _k8s.LARGE,
    )
    promotion = promotion_overrides(
        serving_model_repository,
        serving_index_root,
        experiment_config_root,
        experiment_id,
        treatment_traffic,
        control_model_uri,
        control_index_uri,
    )
    with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a KFP condition)
        _k8s.never_cached(
            _k8s.on_cpu(
                push(
                    blessing=evaluated.outputs["blessing"],
                    model=trained.outputs["model"],
                    index=indexed.outputs["index"],
                    config=config,
                    overrides=data + gates + promotion,
                )
            )
        )
