"""KFP component of ``unisup push``: promote a blessed candidate, publish the A/B config (unisup.promotion).

Pushing has side effects outside the pipeline's artifacts (the serving repository and
the experiment config), so the pipeline disables caching on this task
(``task.set_caching_options(False)``): a re-run with the same inputs pushes again as a
new version instead of replaying a cached result. The pipeline also gates the task with
``dsl.If`` on the evaluation's ``blessed`` output, and the stage itself refuses an
unblessed input.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def push(
    blessing: Input[Artifact],
    model: Input[Model],
    index: Input[Artifact],
    experiment_config: Output[Artifact],
    config: str = "local",
    overrides: list = [],
):
    """Copy the query encoder and the index to serving and write the next experiment config version."""
    import json

    from unisup.config import load_config, to_dict
    from unisup.promotion import push as run_push

    cfg = load_config(config, overrides)
    result = run_push(blessing.path, model.path, index.path, cfg)
    with open(experiment_config.path, "w") as handle:
        json.dump(result.config, handle, indent=1)
    experiment_config.metadata.update(
        {
            "experiment_id": result.experiment_id,
            "version": result.version,
            "config_uri": result.config_uri,
            "model_version": result.model_version,
            "served_model_uri": result.model_uri,
            "served_index_uri": result.index_uri,
            "treatment_traffic": result.config["treatment_traffic"],
            "promotion": json.dumps(to_dict(cfg.promotion)),
            "config": config,
            "overrides": json.dumps(overrides),
        }
    )
