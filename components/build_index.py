"""KFP component of ``unisup build-index``: bi-encoder -> FAISS index folder (unisup.index)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components._image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def build_index(
    model: Input[Model],
    index: Output[Artifact],
    metrics: Output[Metrics],
    config: str = "local",
    overrides: list = [],
):
    """Embed the catalog with the item tower and build the configured FAISS index (GPU when present)."""
    import json

    from unisup.config import load_config
    from unisup.index import build_catalog_index

    built = build_catalog_index(model.path, index.path, load_config(config, overrides))
    meta = built.metadata
    scalars = {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}
    index.metadata.update(
        {**scalars, "index_config": json.dumps(meta["config"]), "config": config, "overrides": json.dumps(overrides)}
    )
    for name in ("recall@10", "recall@100", "build_seconds", "embed_seconds", "num_items"):
        metrics.log_metric(name.replace("@", "_at_"), meta[name])
