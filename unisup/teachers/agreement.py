"""How far one labeler's grades agree with the human grades.

Exact agreement, within-one agreement and quadratic-weighted Cohen's kappa of two
grade vectors, and the condensed nDCG@10 of ranking each query's judged items by
expected grade (over the queries with at least one item above grade 0: the others
have nothing to rank). The audit reports them; training selects a stacked stage's
epoch by them.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import cohen_kappa_score

from unisup.metrics import per_query_metrics

RANK_K = 10


def agreement(predicted: np.ndarray, truth: np.ndarray, num_grades: int) -> dict:
    """Exact and within-one agreement and quadratic-weighted kappa of two grade vectors."""
    predicted, truth = np.asarray(predicted, dtype=np.int64), np.asarray(truth, dtype=np.int64)
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted grades for {len(truth)} true grades")
    if len(truth) == 0:
        return {"n": 0, "exact": None, "within_one": None, "qwk": None}
    kappa = cohen_kappa_score(truth, predicted, weights="quadratic", labels=list(range(num_grades)))
    return {
        "n": int(len(truth)),
        "exact": float(np.mean(predicted == truth)),
        "within_one": float(np.mean(np.abs(predicted - truth) <= 1)),
        "qwk": None if np.isnan(kappa) else float(kappa),
    }


def condensed_ndcg(judgments, probs: np.ndarray, k: int = RANK_K) -> float | None:
    """Mean nDCG@k of ranking each query's judged items by expected grade, over the queries with an
    item above grade 0."""
    queries, items = judgments["query"].to_pylist(), judgments["product_id"].to_pylist()
    grades = judgments["rating"].to_pylist()
    expected = probs @ np.arange(probs.shape[1])
    qrels: dict[str, dict[str, int]] = {}
    scored: dict[str, list[tuple[float, str]]] = {}
    for q, item, g, e in zip(queries, items, grades, expected):
        qrels.setdefault(q, {})[item] = int(g)
        scored.setdefault(q, []).append((-float(e), item))
    qrels = {q: rel for q, rel in qrels.items() if max(rel.values()) > 0}
    if not qrels:
        return None
    rankings = {q: [item for _, item in sorted(scored[q])] for q in qrels}
    return float(np.mean(list(per_query_metrics(rankings, qrels, k)[f"condensed_ndcg@{k}"].values())))
