"""Ranking metrics against graded judgments, per query.

Standard measures come from ir-measures (trec_eval through pytrec_eval): nDCG@k
(linear gain; unjudged = 0), recall@k at the relevance threshold, judged@k, and
condensed nDCG@k (``nDCG(judged_only=True)``: nDCG after dropping unjudged items from
the ranking, trec_eval's ``-J``). The judgment-pool-aware ones are defined here on top:
the share of grade-0 items among the judged top k, and the average grade of the judged top k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ir_measures
import numpy as np
from ir_measures import Judged, R, nDCG

Qrels = Mapping[str, Mapping[str, int]]
Rankings = Mapping[str, Sequence[str]]


def _as_run(rankings: Rankings) -> dict[str, dict[str, float]]:
    """Rank order as strictly decreasing scores so that trec_eval keeps our order."""
    return {q: {item: float(len(items) - i) for i, item in enumerate(items)} for q, items in rankings.items() if items}


def metric_names(k: int) -> list[str]:
    return [f"ndcg@{k}", f"condensed_ndcg@{k}", f"judged@{k}", f"grade0_share@{k}", f"recall@{k}", f"avg_grade@{k}"]


def per_query_metrics(
    rankings: Rankings, qrels: Qrels, k: int = 10, relevance_threshold: int = 2
) -> dict[str, dict[str, float]]:
    """{metric: {query: value}} over every query of ``qrels`` (a query with no ranking scores 0).

    ``grade0_share@k`` and ``avg_grade@k`` are NaN for a query with no judged item in its top k.
    """
    queries = list(qrels)
    qrels_plain = {q: {d: int(g) for d, g in qrels[q].items()} for q in queries}
    # the whole ranking: judged_only drops the unjudged items before the cutoff applies
    run = _as_run({q: list(rankings.get(q, [])) for q in queries})
    out: dict[str, dict[str, float]] = {name: {q: 0.0 for q in queries} for name in metric_names(k)}
    measures = {
        nDCG @ k: f"ndcg@{k}",
        nDCG(judged_only=True) @ k: f"condensed_ndcg@{k}",
        Judged @ k: f"judged@{k}",
        R(rel=relevance_threshold) @ k: f"recall@{k}",
    }
    for m in ir_measures.iter_calc(list(measures), qrels_plain, run):
        out[measures[m.measure]][m.query_id] = float(m.value)
    for q in queries:
        grades = [qrels_plain[q][d] for d in list(rankings.get(q, []))[:k] if d in qrels_plain[q]]
        out[f"grade0_share@{k}"][q] = float(np.mean([g == 0 for g in grades])) if grades else float("nan")
        out[f"avg_grade@{k}"][q] = float(np.mean(grades)) if grades else float("nan")
    return out


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over queries (NaN-aware)."""
    return {
        name: float(np.nanmean(list(values.values()))) if values else float("nan") for name, values in per_query.items()
    }


def per_query_metrics_at(
    rankings: Rankings, qrels: Qrels, cutoffs: Sequence[int], relevance_threshold: int = 2
) -> dict[str, dict[str, float]]:
    """:func:`per_query_metrics` at every cutoff, merged into one {metric@k: {query: value}}."""
    out: dict[str, dict[str, float]] = {}
    for k in cutoffs:
        out.update(per_query_metrics(rankings, qrels, k=k, relevance_threshold=relevance_threshold))
    return out


def engagement_metrics(
    rankings: Rankings, clicked: Mapping[str, set[str]], converted: Mapping[str, set[str]], k: int
) -> dict[str, dict[str, float]]:
    """Engagement recall per query of ``clicked``: the share of its clicked-or-converted
    items in the top ``k`` (``engagement_recall@k``) and of its converted items
    (``conversion_recall@k``, NaN for a query without a conversion). Via ir-measures:
    engaged items are judged 1, converted ones 2."""
    queries = list(clicked)
    qrels = {q: {d: 1 for d in clicked[q]} | {d: 2 for d in converted.get(q, ())} for q in queries}
    run = _as_run({q: list(rankings.get(q, []))[:k] for q in queries})
    names = {R(rel=1) @ k: f"engagement_recall@{k}", R(rel=2) @ k: f"conversion_recall@{k}"}
    out = {name: {q: 0.0 for q in queries} for name in names.values()}
    for m in ir_measures.iter_calc(list(names), qrels, run):
        out[names[m.measure]][m.query_id] = float(m.value)
    for q in queries:
        if not converted.get(q):
            out[f"conversion_recall@{k}"][q] = float("nan")
    return out


def grade_distribution(rankings: Rankings, qrels: Qrels, k: int, num_grades: int) -> dict[str, float]:
    """Share of each grade (``"0"`` .. ``"K-1"``) and of unjudged items (``"unjudged"``)
    among all top-``k`` items of the queries of ``qrels``."""
    counts = dict.fromkeys([str(g) for g in range(num_grades)] + ["unjudged"], 0)
    for q, judged in qrels.items():
        for item in list(rankings.get(q, []))[:k]:
            counts[str(int(judged[item])) if item in judged else "unjudged"] += 1
    total = sum(counts.values())
    return {name: (n / total if total else float("nan")) for name, n in counts.items()}
