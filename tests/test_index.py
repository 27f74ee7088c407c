"""FAISS index build: layout, metadata, recall, resume from shards, bad settings, and the
check that an index belongs to a model and a catalog."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest

from unisup import storage
from unisup.config import ConfigError, load_config
from unisup.data.dataset import load_catalog
from unisup.errors import ArtifactMismatch
from unisup.index import (
    IDS_FILE,
    INDEX_FILE,
    METADATA_FILE,
    ItemIndex,
    build_catalog_index,
    build_faiss_index,
    build_index,
    catalog_record,
    check_index_matches,
    embed_in_shards,
    exact_search,
    recall_against_exact,
)


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder_path, tmp_path_factory):
    from unisup.biencoder.tower import Tower, save_biencoder

    tower = Tower.from_pretrained(tiny_encoder_path, max_length=32)
    return save_biencoder(tower, tower, tmp_path_factory.mktemp("model") / "biencoder")


def _index_cfg(tmp_path, **values):
    cfg = load_config(
        "local", [f"index.work_dir={tmp_path / 'shards'}", "index.shard_size=256", "index.recall_queries=12"]
    )
    return dataclasses.replace(cfg.index, **values)


def test_build_index_writes_folder_and_finds_items_by_their_own_text(tiny_model, tiny_sample, tmp_path):
    from unisup.biencoder.tower import load_biencoder
    from unisup.data.catalog import item_texts

    catalog = load_catalog(str(tiny_sample["catalog"])).accepted
    cfg = _index_cfg(tmp_path, factory="Flat", search_params="")
    built = build_index(
        str(tiny_model), catalog, str(tmp_path / "index"), cfg, query_texts=["usb cable", "laptop bag"], progress=False
    )

    assert {p.name for p in (tmp_path / "index").iterdir()} >= {INDEX_FILE, IDS_FILE, METADATA_FILE}
    meta = json.loads((tmp_path / "index" / METADATA_FILE).read_text())
    assert meta["factory"] == "Flat" and meta["dimension"] == 32 and meta["metric"] == "inner_product"
    assert meta["num_items"] == catalog.num_rows
    assert meta["recall@10"] == 1.0 and meta["recall@100"] == 1.0  # Flat is exact
    assert meta["build_seconds"] >= 0 and meta["model_fingerprint"] == storage.content_digest(str(tiny_model))
    assert meta["recall_queries"].startswith("2 queries")
    assert built.metadata == meta

    index = ItemIndex.load(str(tmp_path / "index"))
    assert index.item_ids == catalog["product_id"].to_pylist()
    _, item_tower = load_biencoder(tiny_model)
    texts = item_texts(catalog)
    hits = index.search(item_tower.encode(texts[:5]), k=3)
    assert [h[0][0] for h in hits] == index.item_ids[:5]
    assert all(h[0][1] == pytest.approx(1.0, abs=1e-4) for h in hits)


def test_hnsw_recall_is_measured_against_exact_search(tiny_model, tiny_sample, tmp_path):
    catalog = load_catalog(str(tiny_sample["catalog"])).accepted
    cfg = _index_cfg(tmp_path, factory="HNSW8", search_params="efSearch=4")
    meta = build_index(str(tiny_model), catalog, str(tmp_path / "hnsw"), cfg, progress=False).metadata
    assert meta["recall_queries"] == "12 catalog vectors used as queries"
    assert 0.0 < meta["recall@10"] <= 1.0 and 0.0 < meta["recall@100"] <= 1.0
    assert meta["search_params"] == "efSearch=4"


def test_recall_against_exact_on_a_coarse_ivf_is_below_one():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    exact = exact_search(vectors, queries, 10, "l2")
    index, on_gpu = build_faiss_index(vectors, "IVF32,Flat", "l2", train_size=1000, use_gpu=False)
    assert not on_gpu
    index.nprobe = 1
    low = recall_against_exact(index, exact, queries, 10)
    index.nprobe = 32
    assert recall_against_exact(index, exact, queries, 10) == 1.0
    assert 0.0 < low < 1.0


def test_embedding_resumes_from_shards_written_before_a_crash(tmp_path):
    texts = [f"text {i}" for i in range(10)]
    calls = []

    def encode(chunk):
        calls.append(list(chunk))
        if len(calls) == 3:
            raise RuntimeError("crash while embedding the third shard")
        return np.full((len(chunk), 2), float(len(calls)), dtype=np.float32)

    with pytest.raises(RuntimeError, match="crash"):
        embed_in_shards(encode, texts, tmp_path, shard_size=4, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-00000.json",
        "shard-00000.npy",
        "shard-00001.json",
        "shard-00001.npy",
    ]
    vectors = embed_in_shards(encode, texts, tmp_path, shard_size=4, progress=False)
    assert calls[3:] == [texts[8:]]  # only the missing shard is embedded again
    assert vectors.shape == (10, 2)
    assert vectors[:, 0].tolist() == [1.0] * 4 + [2.0] * 4 + [4.0] * 2


def _shard_texts_and_encoder():
    texts = [f"text {i}" for i in range(10)]
    calls = []

    def encode(chunk):
        calls.append(list(chunk))
        return np.array([[float(text.split()[1]), 1.0] for text in chunk], dtype=np.float32)

    return texts, encode, calls


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), id="corrupt-same-size"),
    ],
)
def test_a_damaged_cached_shard_is_detected_and_recomputed(tmp_path, caplog, damage):
    texts, encode, calls = _shard_texts_and_encoder()
    first = embed_in_shards(encode, texts, tmp_path, shard_size=4, progress=False)
    shard = tmp_path / "shard-00001.npy"
    shard.write_bytes(damage(shard.read_bytes()))

    with caplog.at_level(logging.WARNING, logger="unisup.index"):
        again = embed_in_shards(encode, texts, tmp_path, shard_size=4, progress=False)
    assert calls[3:] == [texts[4:8]]  # the damaged shard only
    assert np.array_equal(again, first)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "shard-00001.npy is truncated or corrupt" in warning and "recomputing it" in warning
    caplog.clear()
    embed_in_shards(encode, texts, tmp_path, shard_size=4, progress=False)  # the rewritten shard is reused
    assert len(calls) == 4 and not caplog.records


def test_a_cached_shard_without_a_record_is_recomputed(tmp_path, caplog):
    texts, encode, calls = _shard_texts_and_encoder()
    embed_in_shards(encode, texts, tmp_path, shard_size=4, progress=False)
    (tmp_path / "shard-00000.json").unlink()
    with caplog.at_level(logging.WARNING, logger="unisup.index"):
        embed_in_shards(encode, texts, tmp_path, shard_size=4, progress=False)
    assert calls[3:] == [texts[:4]]
    assert "no size and digest recorded" in caplog.text


def test_bad_factory_metric_and_search_params_are_named():
    vectors = np.eye(4, dtype=np.float32)
    with pytest.raises(ConfigError, match="index.factory 'Nonsense12'.*could not parse index string Nonsense12"):
        build_faiss_index(vectors, "Nonsense12", "inner_product", train_size=10, use_gpu=False)
    with pytest.raises(ConfigError, match="index.metric"):
        build_faiss_index(vectors, "Flat", "cosine", train_size=10, use_gpu=False)
    from unisup.index import apply_search_params

    index, _ = build_faiss_index(vectors, "Flat", "inner_product", train_size=10, use_gpu=False)
    with pytest.raises(ConfigError, match="index.search_params 'nprobe=4'") as err:
        apply_search_params(index, "nprobe=4")
    assert "\n" not in str(err.value) and "Error in" not in str(err.value)


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"factory": "Flat", "search_params": "efSearch=128"}, "index.search_params 'efSearch=128'"),
        ({"factory": "IVF16,PQ48np", "search_params": "nprobe=4"}, "index.factory 'IVF16,PQ48np'.*dimension 32"),
        ({"factory": "Flat", "search_params": "", "metric": "cosine"}, "index.metric"),
    ],
)
def test_index_settings_are_checked_before_anything_is_embedded(
    tiny_model, tiny_sample, tmp_path, monkeypatch, settings, key
):
    from unisup.biencoder.tower import Tower

    def no_embedding(self, *args, **kwargs):
        raise AssertionError("the catalog was embedded before the index settings were checked")

    monkeypatch.setattr(Tower, "encode", no_embedding)
    catalog = load_catalog(str(tiny_sample["catalog"])).accepted
    with pytest.raises(ConfigError, match=key):
        build_index(str(tiny_model), catalog, str(tmp_path / "index"), _index_cfg(tmp_path, **settings), progress=False)
    assert not (tmp_path / "shards").exists() and not (tmp_path / "index").exists()


def test_the_index_records_its_model_and_catalog_and_is_checked_against_them(
    tiny_model, tiny_encoder_path, tiny_overrides, tiny_sample, tmp_path
):
    from unisup.biencoder.tower import Tower, save_biencoder

    settings = [f"index.work_dir={tmp_path / 'shards'}", "index.factory=Flat", "index.search_params=''"]
    cfg = load_config("local", tiny_overrides + settings)
    index = str(tmp_path / "index")
    meta = build_catalog_index(str(tiny_model), index, cfg, progress=False).metadata
    catalog = catalog_record(str(tiny_sample["catalog"]), meta["num_items"])
    assert meta["catalog"] == catalog and catalog["digest"] == storage.content_digest(str(tiny_sample["catalog"]))
    model_digest = storage.content_digest(str(tiny_model))
    assert check_index_matches(index, str(tiny_model), model_digest, catalog) == meta

    tower = Tower.from_pretrained(tiny_encoder_path, max_length=12)
    other_model = save_biencoder(tower, tower, tmp_path / "other-model")
    other_digest = storage.content_digest(str(other_model))
    with pytest.raises(ArtifactMismatch, match=f"built by the model with digest {model_digest}.*digest {other_digest}"):
        check_index_matches(index, str(other_model), other_digest, catalog)

    other_catalog = tmp_path / "other-products.parquet"
    load_catalog(str(tiny_sample["catalog"])).accepted.slice(1).to_pandas().to_parquet(other_catalog)
    other = catalog_record(str(other_catalog), catalog["items"] - 1)
    with pytest.raises(ArtifactMismatch) as err:
        check_index_matches(index, str(tiny_model), model_digest, other)
    for value in (catalog["uri"], catalog["digest"], catalog["items"], other["uri"], other["digest"], other["items"]):
        assert str(value) in str(err.value)
    with pytest.raises(ArtifactMismatch, match="items"):  # same file, another count of accepted items
        check_index_matches(index, str(tiny_model), model_digest, {**catalog, "items": catalog["items"] + 1})


@pytest.mark.gcs
def test_build_index_writes_to_gcs(tiny_model, tiny_sample, tmp_path, gcs_emulator):
    from unisup import storage

    catalog = load_catalog(str(tiny_sample["catalog"])).accepted
    uri = f"gs://{gcs_emulator}/indexes/tiny"
    build_index(str(tiny_model), catalog, uri, _index_cfg(tmp_path, factory="Flat", search_params=""), progress=False)
    assert sorted(u.rsplit("/", 1)[1] for u in storage.list_prefix(uri + "/")) == sorted(
        [IDS_FILE, INDEX_FILE, METADATA_FILE]
    )
    assert len(ItemIndex.load(uri).item_ids) == catalog.num_rows


def _train_frozen(tiny_overrides, tiny_encoder_path, tiny_training_lists, tmp, extra=()):
    """A bi-encoder trained for 2 steps with the frozen item tower in ``tmp/model``; the catalog
    embeddings it cached, and its config."""
    from unisup.biencoder.train import train

    cache = tmp / "embedding-cache"
    overrides = [
        f"training.encoder_path={tiny_encoder_path}",
        "training.max_steps=2",
        "training.lists_per_batch=3",
        "training.validation_distractors=20",
        f"channels.cache_dir={cache}",
        f"index.work_dir={tmp / 'shards'}",
        "index.factory=Flat",
        'index.search_params=""',
        *extra,
    ]
    config = load_config("local", tiny_overrides + overrides)
    assert config.training.freeze_item_tower  # the default
    train(str(tiny_training_lists), str(tmp / "model"), config, work_dir=str(tmp / "work"), progress=False)
    return tmp / "model", cache, config


@pytest.fixture(scope="module")
def frozen_model(tiny_overrides, tiny_encoder_path, tiny_training_lists, tmp_path_factory):
    return _train_frozen(tiny_overrides, tiny_encoder_path, tiny_training_lists, tmp_path_factory.mktemp("frozen"))


def test_an_item_adapter_is_applied_to_the_cached_catalog_embeddings(
    tiny_overrides, tiny_encoder_path, tiny_training_lists, tiny_sample, tmp_path
):
    """The index of a frozen item tower with a trained adapter reads the start encoder's cached
    vectors and maps them by the adapter: the vectors the whole item tower gives."""
    from unisup.biencoder.tower import load_biencoder
    from unisup.data.catalog import item_texts

    adapter = ["training.item_adapter=true", "training.adapter_learning_rate=0.05"]
    model, cache, config = _train_frozen(tiny_overrides, tiny_encoder_path, tiny_training_lists, tmp_path, adapter)
    catalog = load_catalog(str(tiny_sample["catalog"])).accepted
    meta = build_index(
        str(model), catalog, str(tmp_path / "index"), config.index, progress=False, embedding_cache_dir=cache
    ).metadata
    assert meta["item_embeddings"] == "frozen start encoder: from the embedding cache"
    _, item_tower = load_biencoder(model)
    expected = item_tower.encode(item_texts(catalog, tuple(config.training.item_fields)), batch_size=64)
    np.testing.assert_allclose(_vectors(tmp_path / "index"), expected, atol=1e-5)
    assert (
        np.abs(
            expected - item_tower.encode(item_texts(catalog, tuple(config.training.item_fields)), with_head=False)
        ).max()
        > 1e-4
    )


def _vectors(index_dir):
    index = ItemIndex.load(str(index_dir)).index
    return index.reconstruct_n(0, index.ntotal)


def test_a_frozen_item_tower_reuses_the_cached_catalog_embeddings(frozen_model, tiny_sample, tmp_path):
    """The catalog embeddings training cached (under the dense channel's key for the same
    encoder) are reused, and equal those computed afresh or by the regular item-tower path."""
    from unisup.biencoder.tower import MANIFEST
    from unisup.data.catalog import item_texts
    from unisup.encoders import DenseEncoder, embedding_cache_path

    model, cache, config = frozen_model
    catalog = load_catalog(str(tiny_sample["catalog"])).accepted
    texts = item_texts(catalog, tuple(config.training.item_fields))
    dense = DenseEncoder(config.training.encoder_path, max_length=config.training.item_max_length)
    assert embedding_cache_path(dense.fingerprint, texts, cache).exists()  # the dense channel's key

    def build(name, cache_dir):
        meta = build_index(
            str(model), catalog, str(tmp_path / name), config.index, progress=False, embedding_cache_dir=cache_dir
        ).metadata
        return meta["item_embeddings"], _vectors(tmp_path / name)

    reused, from_cache = build("reused", cache)
    assert reused == "frozen start encoder: from the embedding cache"
    cold, fresh = build("cold", tmp_path / "empty-cache")
    assert cold == "frozen start encoder: embedded"
    assert np.array_equal(from_cache, fresh)
    assert np.array_equal(from_cache, dense.encode(texts))

    # weights that no longer match the recorded digest are embedded by the item tower
    manifest = json.loads((model / MANIFEST).read_text())
    manifest["frozen_item_tower"]["weights_digest"] = "0" * 16
    (tmp_path / "tampered").mkdir()
    shutil.copytree(model, tmp_path / "tampered" / "model")
    (tmp_path / "tampered" / "model" / MANIFEST).write_text(json.dumps(manifest))
    meta = build_index(
        str(tmp_path / "tampered" / "model"),
        catalog,
        str(tmp_path / "t-index"),
        config.index,
        progress=False,
        embedding_cache_dir=cache,
    ).metadata
    assert meta["item_embeddings"] == "embedded by the item tower"
    assert np.array_equal(_vectors(tmp_path / "t-index"), from_cache)  # same batch size (64): same bits
