"""The train component: its function directly, and through kfp.local."""

from kfp import dsl

from components.train import train
from unisup.biencoder.tower import load_biencoder

TINY = [
    "training.lists_per_batch=3",
    "training.items_per_list=6",
    "training.max_steps=2",
    "training.validation_distractors=20",
    "training.query_max_length=12",
    "training.item_max_length=16",
]


def test_train_function(tiny_training_lists, tiny_overrides, tiny_encoder_path, tmp_path):
    model, encoder, metrics = (
        dsl.Model(uri=str(tmp_path / "model")),
        dsl.Model(uri=str(tmp_path / "qenc")),
        dsl.Metrics(uri=str(tmp_path / "m")),
    )
    train.python_func(
        training_lists=dsl.Dataset(uri=str(tiny_training_lists)),
        model=model,
        query_encoder=encoder,
        metrics=metrics,
        config="local",
        overrides=tiny_overrides + TINY + [f"training.encoder_path={tiny_encoder_path}"],
        work_dir="",
    )
    query, _ = load_biencoder(model.path)
    assert query.dim == 32
    assert model.metadata["steps"] == 2 and model.metadata["loss"] == "listwise_ce" and model.metadata["max_steps"] == 2
    assert encoder.metadata["triton_model"] == "query_encoder/1"
    assert (tmp_path / "qenc" / "query_encoder" / "config.pbtxt").exists()


def test_train_component_in_kfp_local(tiny_training_lists, tiny_overrides, tiny_encoder_path, tmp_path, kfp_local):

    @dsl.pipeline(name="train-only")
    def pipeline(overrides: list):
        lists = dsl.importer(artifact_uri=str(tiny_training_lists), artifact_class=dsl.Dataset)
        train(training_lists=lists.output, overrides=overrides)

    pipeline(overrides=tiny_overrides + TINY + [f"training.encoder_path={tiny_encoder_path}"])
    models = list(kfp_local.glob("train-only-*/train/model"))
    assert len(models) == 1
    query, item = load_biencoder(models[0])
    assert query is not item and query.encode(["lamp"]).shape == (1, 32)  # frozen item tower: its own copy
    assert list(kfp_local.glob("train-only-*/train/query_encoder/query_encoder/1/model.py"))
