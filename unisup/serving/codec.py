"""Texts in and out of Triton BYTES tensors, the same for every served model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def decode_texts(array: np.ndarray) -> list[str]:
    """A BYTES tensor (any shape, np.object_ of bytes or str) as a flat list of str."""
    return [
        v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(array, dtype=np.object_).reshape(-1)
    ]


def encode_texts(texts: Sequence[str]) -> np.ndarray:
    """Texts as a (n, 1) np.object_ array of UTF-8 bytes, the BYTES layout the served models take."""
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
