"""The build_index component: its function directly, and through kfp.local."""

import json

import pytest
from kfp import dsl

from components.build_index import build_index
from unisup import storage
from unisup.index import ItemIndex


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder_path, tmp_path_factory):
    from unisup.biencoder.tower import Tower, save_biencoder

    tower = Tower.from_pretrained(tiny_encoder_path, max_length=16)
    return save_biencoder(tower, tower, tmp_path_factory.mktemp("component_model") / "model")


def _overrides(tiny_overrides, tmp_path):
    return tiny_overrides + [
        f"index.work_dir={tmp_path / 'shards'}",
        "index.factory=HNSW16",
        "index.search_params=efSearch=64",
    ]


def test_build_index_function(tiny_model, tiny_overrides, tmp_path):
    index, metrics = dsl.Artifact(uri=str(tmp_path / "index")), dsl.Metrics(uri=str(tmp_path / "metrics"))
    build_index.python_func(
        model=dsl.Model(uri=str(tiny_model)),
        index=index,
        metrics=metrics,
        config="local",
        overrides=_overrides(tiny_overrides, tmp_path),
    )
    loaded = ItemIndex.load(index.path)
    assert index.metadata["factory"] == "HNSW16" and index.metadata["search_params"] == "efSearch=64"
    assert index.metadata["num_items"] == len(loaded.item_ids) > 300
    assert json.loads(index.metadata["index_config"])["factory"] == "HNSW16"
    assert json.loads(index.metadata["overrides"]) == _overrides(tiny_overrides, tmp_path)
    assert (
        index.metadata["recall_queries"] == "12 queries encoded by the query tower"
    )  # the tiny sample's judged queries
    assert 0 < metrics.metadata["recall_at_10"] <= 1.0
    recorded = json.loads((tmp_path / "index" / "index.json").read_text())
    assert recorded["model_fingerprint"] == storage.content_digest(str(tiny_model))
    catalog = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("data.catalog_uri="))
    assert recorded["catalog"] == {
        "uri": catalog,
        "digest": storage.content_digest(catalog),
        "items": len(loaded.item_ids),
    }


def test_build_index_component_in_kfp_local(tiny_model, tiny_overrides, tmp_path, kfp_local):

    @dsl.pipeline(name="build-index-only")
    def pipeline(overrides: list):
        model = dsl.importer(artifact_uri=str(tiny_model), artifact_class=dsl.Model)
        build_index(model=model.output, overrides=overrides)

    pipeline(overrides=_overrides(tiny_overrides, tmp_path))
    [folder] = list(kfp_local.glob("build-index-only-*/build-index/index"))
    meta = json.loads((folder / "index.json").read_text())
    assert meta["factory"] == "HNSW16" and meta["dimension"] == 32 and meta["metric"] == "inner_product"
    assert 0 < meta["recall@10"] <= 1.0 and meta["build_seconds"] >= 0
