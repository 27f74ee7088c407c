"""The ablation pipeline: one data half (logs, engagement, teacher labels), then each fusion
preset trained, indexed and evaluated in a ``dsl.ParallelFor``, and the evaluations put
side by side (unified vs engagement-only vs relevance-only vs the no-prior and
no-engagement variants, each against the BM25 baseline)."""

from kfp import dsl

from components import _k8s
from components.compare import compare_runs
from components.evaluate import evaluate
from pipelines._stages import data_overrides, index_overrides, labeled_engagement, trained_arm
from unisup.config import Config

DEFAULTS = Config()
PARALLEL_PRESETS = 2  # presets trained at once (each takes a GPU node)
PRESETS = [
    "unified",
    "engagement_only",
    "relevance_only",
    "unified_no_prior",
    "unified_no_engagement",
]


@dsl.pipeline(name="unified-supervision-ablation")
def ablation(
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
    presets: list = PRESETS,
    max_epochs: int = 0,
    max_steps: int = DEFAULTS.training.max_steps,
    faiss_factory: str = DEFAULTS.index.factory,
    faiss_search_params: str = DEFAULTS.index.search_params,
):
    """Trains, indexes and evaluates every fusion preset on one set of teacher labels and puts them side by side.

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
        presets: The fusion presets to train, each with its weights.
        max_epochs: Epochs per bi-encoder; 0 takes training.max_epochs of the profile.
        max_steps: Optimizer steps per bi-encoder; 0 means no cap.
        faiss_factory: FAISS index factory string (HNSW32, IVF1024,Flat, Flat, ...).
        faiss_search_params: FAISS search-time parameters (efSearch=128, nprobe=16); empty uses FAISS's defaults.
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
    index = index_overrides(faiss_factory, faiss_search_params)
    with dsl.ParallelFor(presets, parallelism=PARALLEL_PRESETS, name="presets") as preset:
        fusion = [f"fusion.preset={preset}"]
        trained, indexed = trained_arm(labels, engagement, config, data, fusion, index, max_epochs, max_steps)
        evaluated = _k8s.on_cpu(
            evaluate(
                candidate_model=trained.outputs["model"],
                candidate_index=indexed.outputs["index"],
                engagement=holdout_engagement,
                teacher_audit=teacher_audit,
                config=config,
                overrides=data + index + fusion,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ),
            _k8s.LARGE,
        )
    _k8s.on_cpu(compare_runs(results=dsl.Collected(evaluated.outputs["results_json"])))
