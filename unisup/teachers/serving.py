"""What a served teacher does with one dynamic batch, independent of Triton.

The python-backend ``model.py`` (``unisup/serving/templates/teacher_model.py``) only converts
Triton tensors to numpy and back; the work is here so that it is importable and
testable outside Triton: decode BYTES texts, score the whole dynamic batch (all
requests together) the way :class:`~unisup.teachers.backends.InProcessBackend` scores
a call (sorted by length, forward passes of ``batch_size`` pairs, so a merged batch is
not padded to its longest pair), split the probabilities back per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unisup.serving.codec import decode_texts

QUERY_INPUT = "query"
ITEM_INPUT = "item"
PROBS_OUTPUT = "probs"


class TeacherService:
    """A loaded teacher that scores whole dynamic batches."""

    def __init__(self, teacher_dir: str | Path, device: str = "cpu", batch_size: int = 64):
        from unisup.teachers.model import load_teacher

        self.teacher = load_teacher(teacher_dir, device)
        self.batch_size = batch_size

    def score_batches(self, requests: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """(query, item) BYTES arrays per request -> (n_i, K) float32 probabilities per request,
        all requests scored together."""
        queries, items, sizes = [], [], []
        for number, (query, item) in enumerate(requests):
            q, t = decode_texts(query), decode_texts(item)
            if len(q) != len(t):
                raise ValueError(f"request {number}: {len(q)} queries but {len(t)} items")
            queries.extend(q)
            items.extend(t)
            sizes.append(len(q))
        if not queries:
            return [np.zeros((0, self.teacher.num_grades), dtype=np.float32) for _ in requests]
        probs = self.teacher.predict_probs(queries, items, self.batch_size)
        return np.split(probs, np.cumsum(sizes)[:-1])
