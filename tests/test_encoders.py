"""Encoders and their cache: the dense encoder's vectors, the content-keyed embedding cache,
exact top-k by inner product, and the packaged MiniLM."""

import numpy as np
import pytest

from unisup.encoders import DenseEncoder, cached_encode, top_k_inner_product

TEXTS = [
    "Samsung 55 inch 4K smart TV television",
    "Anker 4-port USB 3.0 hub for laptops",
    "HP black toner cartridge for laser printers",
    "Lenovo ThinkPad laptop 14 inch notebook",
]


def test_top_k_inner_product_matches_argsort():
    rng = np.random.default_rng(0)
    queries, items = rng.normal(size=(5, 8)), rng.normal(size=(50, 8))
    idx, scores = top_k_inner_product(queries, items, 7)
    expected = np.argsort(-(queries @ items.T), axis=1)[:, :7]
    assert (idx == expected).all() and (np.diff(scores, axis=1) <= 0).all()


def test_cached_encode_keys_by_content_and_keeps_the_vectors(tiny_encoder_path, tmp_path):
    encoder = DenseEncoder(tiny_encoder_path, max_length=16, batch_size=3)
    vectors = cached_encode(encoder, TEXTS, tmp_path)
    assert vectors.shape == (4, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    cached = list(tmp_path.glob("*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(cached_encode(encoder, TEXTS, tmp_path), vectors)
    cached_encode(encoder, TEXTS[:2], tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # other content, other key
    # batching and length-sorting do not change the embeddings
    np.testing.assert_allclose(
        DenseEncoder(tiny_encoder_path, max_length=16, batch_size=1).encode(TEXTS), vectors, atol=1e-5
    )


@pytest.mark.slow
def test_packaged_minilm_embeds_meaningfully():
    encoder = DenseEncoder(max_length=32)
    vectors = encoder.encode(
        ["wireless bluetooth headphones", "bluetooth headset with microphone", "black toner cartridge"]
    )
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
