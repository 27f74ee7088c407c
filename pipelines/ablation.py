"""The ablation pipeline: one data half (logs, engagement, teacher labels), then each fusion
preset trained, indexed and evaluated in a ``dsl.ParallelFor``, and the evaluations put
side by side (unified vs engagement-only vs relevance-only vs the no-prior and
no-engagement variants, each against the BM25 baseline)."""

from kfp import dsl

from components import _k8s
from components.build_index import build_index
from components.compare import compare_runs
from components.evaluate import evaluate
from components.fuse import fuse
from components.train import train
from pipelines._stages import data_overrides, index_overrides, labeled_engagement

PARALLEL_PRESETS = 2  # presets trained at once (each takes a GPU node)
PRESETS = [
    "unified",
    "engagement_only",
    "relevance_only",
    "unified_no_prior",
    "unified_no_engagement",
]


@dsl.pipeline(name="unified-supervision-ablation", description=__doc__.splitlines()[0])
def ablation(
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
    presets: list = PRESETS,
    max_epochs: int = 6,
    max_steps: int = 0,
    faiss_factory: str = "HNSW32",
    faiss_search_params: str = "efSearch=128",
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
    with dsl.ParallelFor(presets, parallelism=PARALLEL_PRESETS, name="presets") as preset:
        overrides = common + [
            f"fusion.preset={preset}",
            f"training.max_epochs={max_epochs}",
            f"training.max_steps={max_steps}",
            *index_overrides(faiss_factory, faiss_search_params),
        ]
        fused = _k8s.on_cpu(
            fuse(labels=labels, engagement=engagement, config=config, overrides=overrides),
            _k8s.LARGE,
        )
        trained = _k8s.on_gpu(train(training_lists=fused.outputs["training_lists"], config=config, overrides=overrides))
        index = _k8s.on_gpu(build_index(model=trained.outputs["model"], config=config, overrides=overrides))
        evaluated = _k8s.on_cpu(
            evaluate(
                candidate_model=trained.outputs["model"],
                candidate_index=index.outputs["index"],
                engagement=holdout_engagement,
                teacher_audit=teacher_audit,
                config=config,
                overrides=overrides,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ),
            _k8s.LARGE,
        )
    _k8s.on_cpu(compare_runs(results=dsl.Collected(evaluated.outputs["results_json"])))
