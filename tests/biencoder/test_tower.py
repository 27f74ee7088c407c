"""Tower and bi-encoder folders as sentence-transformers models: each tower loads with
``SentenceTransformer`` and embeds as ``Tower.encode``; the root folder routes queries to the
query tower and documents to the item tower; no weight file is stored twice."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from unisup.biencoder.tower import PROJECTION_FILE, Tower, load_biencoder, off_the_shelf_biencoder, save_biencoder
from unisup.data.catalog import item_texts

SAMPLE = "data/sample/products.parquet"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Item texts and titles of 48 products of the bundled sample, long ones included."""
    catalog = pq.read_table(SAMPLE).slice(0, 48)
    return item_texts(catalog) + catalog["title"].to_pylist()


def _sentence_transformer(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


@pytest.mark.parametrize("projection", [None, 8])
def test_a_tower_folder_is_a_sentence_transformer_with_the_same_embeddings(
    tiny_encoder_path, texts, tmp_path, projection
):
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=24, projection_dim=projection)
    tower.save(tmp_path / "tower")
    model = _sentence_transformer(tmp_path / "tower")
    assert model.max_seq_length == 24
    assert model.get_embedding_dimension() == tower.dim == (projection or 32)
    assert np.abs(model.encode(texts, batch_size=16) - tower.encode(texts)).max() < 1e-5
    modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((tmp_path / "tower" / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", *["Dense"] * bool(projection), "Normalize"]
    assert json.loads((tmp_path / "tower" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    if projection:
        dense = json.loads((tmp_path / "tower" / "2_Dense" / "config.json").read_text())
        assert dense["bias"] is False and dense["activation_function"] == "torch.nn.modules.linear.Identity"
        assert (tmp_path / "tower" / PROJECTION_FILE).exists()
    np.testing.assert_array_equal(Tower.load(tmp_path / "tower").encode(texts), tower.encode(texts))


def test_the_head_applies_to_cached_pooled_vectors_as_the_tower_does(tiny_encoder_path, texts):
    """An identity adapter leaves the vectors as they are; a changed one gives, over the pooled
    vectors alone (the cache's), what the whole tower gives."""
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=24)
    pooled = tower.encode(texts, with_head=False)
    np.testing.assert_allclose(tower.add_identity_adapter().encode(texts), pooled, atol=1e-6)
    tower.projection.weight.data.add_(0.3 * torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
    adapted = tower.encode(texts)
    assert np.abs(adapted - pooled).max() > 1e-2
    np.testing.assert_allclose(tower.apply_head(pooled), adapted, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(adapted, axis=1), 1.0, atol=1e-5)


def test_the_biencoder_folder_routes_queries_and_documents(tiny_encoder_path, texts, tmp_path):
    query = Tower.from_pretrained(tiny_encoder_path, max_length=12, seed=1)
    item = Tower.from_pretrained(tiny_encoder_path, max_length=32, seed=2)
    query.encoder.embeddings.word_embeddings.weight.data.mul_(1.5)  # towers that differ, as after training
    save_biencoder(query, item, tmp_path / "model")
    model = _sentence_transformer(tmp_path / "model")
    queries, documents = model.encode_query(texts), model.encode_document(texts)
    assert np.abs(queries - query.encode(texts)).max() < 1e-5
    assert np.abs(documents - item.encode(texts)).max() < 1e-5
    assert np.abs(queries - documents).max() > 1e-3
    weights = sorted(p.relative_to(tmp_path / "model").as_posix() for p in (tmp_path / "model").rglob("*.safetensors"))
    assert weights == ["item_tower/model.safetensors", "query_tower/model.safetensors"]
    loaded_query, loaded_item = load_biencoder(tmp_path / "model")
    np.testing.assert_array_equal(loaded_item.encode(texts), item.encode(texts))


def test_shared_towers_are_one_folder_behind_both_routes(tiny_encoder_path, texts, tmp_path):
    tower = Tower.from_pretrained(tiny_encoder_path, max_length=24, projection_dim=8)
    save_biencoder(tower, tower, tmp_path / "model")
    router = json.loads((tmp_path / "model" / "router_config.json").read_text())
    assert router["structure"]["query"] == router["structure"]["document"]
    assert all(module_id.startswith("query_tower") for module_id in router["types"])
    assert not (tmp_path / "model" / "item_tower").exists()
    model = _sentence_transformer(tmp_path / "model")
    expected = tower.encode(texts)
    assert np.abs(model.encode_query(texts) - expected).max() < 1e-5
    assert np.abs(model.encode_document(texts) - expected).max() < 1e-5


@pytest.mark.slow
def test_the_off_the_shelf_folder_embeds_as_the_packaged_minilm(texts, tmp_path):
    from unisup.encoders import packaged_minilm_path

    off_the_shelf_biencoder(tmp_path / "model", max_length=256)
    reference = _sentence_transformer(packaged_minilm_path())
    model = _sentence_transformer(tmp_path / "model")
    expected = reference.encode(texts)
    assert np.abs(model.encode_document(texts) - expected).max() < 1e-5
    assert np.abs(model.encode_query(texts) - expected).max() < 1e-5
