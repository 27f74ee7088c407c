"""KFP component of ``unisup train``: training lists -> bi-encoder + Triton query encoder
(unisup.biencoder.train). A GPU stage: runs in the trainer image."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train(
    training_lists: Input[Dataset],
    model: Output[Model],
    query_encoder: Output[Model],
    metrics: Output[Metrics],
    config: str = "local",
    overrides: list = [],
    max_epochs: int = 0,
    work_dir: str = "",
):
    """Train the bi-encoder; ``model`` gets both towers (save_biencoder layout),
    ``query_encoder`` a Triton model repository holding the query tower. ``max_epochs`` 0 keeps
    the config's ``training.max_epochs``. Checkpoints go to ``work_dir`` (empty: beside the
    model) so a retried task resumes."""
    import json

    from unisup.biencoder.train import train as run_train
    from unisup.config import load_config

    cfg = load_config(config, list(overrides) + [f"training.max_epochs={max_epochs}"] * (max_epochs > 0))
    result = run_train(
        training_lists.path, model.path, cfg, triton_repository=query_encoder.path, work_dir=work_dir or None
    )
    parameters = {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in result.parameters.items()
    }
    model.metadata.update(
        {
            **parameters,
            "config": config,
            "overrides": json.dumps(overrides),
            "steps": result.steps,
            "best_step": result.best_step,
            "best_validation_ndcg": result.best_metric,
            "start_validation_ndcg": result.start_metric,
            "below_start": result.below_start,
        }
    )
    query_encoder.metadata.update({"triton_model": result.triton_model, "model_name": cfg.training.triton_model_name})
    metrics.log_metric("steps", result.steps)
    metrics.log_metric("epochs", result.epochs)
    metrics.log_metric(f"best_validation_ndcg_at_{cfg.training.validation_k}", result.best_metric)
    if result.start_metric is not None:
        metrics.log_metric(f"start_validation_ndcg_at_{cfg.training.validation_k}", result.start_metric)
    metrics.log_metric("below_start", float(result.below_start))
    metrics.log_metric("lists_per_second", result.lists_per_second)
    metrics.log_metric("items_per_second", result.items_per_second)
