"""Ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from unisup.metrics import (
    engagement_metrics,
    grade_distribution,
    mean_metrics,
    per_query_metrics,
    per_query_metrics_at,
)

LOG2_3 = math.log2(3)
QRELS = {"q": {"a": 3, "b": 0, "c": 2}}
IDEAL_DCG_3 = 3 / 1 + 2 / LOG2_3  # a, c, b


def test_graded_metrics_by_hand_with_an_unjudged_item_last():
    m = per_query_metrics({"q": ["b", "a", "x"]}, QRELS, k=3, relevance_threshold=2)
    dcg = 0 / 1 + 3 / LOG2_3 + 0
    assert m["ndcg@3"]["q"] == pytest.approx(dcg / IDEAL_DCG_3)
    assert m["condensed_ndcg@3"]["q"] == pytest.approx(dcg / IDEAL_DCG_3)
    assert m["judged@3"]["q"] == pytest.approx(2 / 3)
    assert m["grade0_share@3"]["q"] == pytest.approx(1 / 2)
    assert m["avg_grade@3"]["q"] == pytest.approx(3 / 2)
    assert m["recall@3"]["q"] == pytest.approx(1 / 2)  # a of the relevant {a, c}


def test_condensed_ndcg_drops_unjudged_items_before_cutting():
    m = per_query_metrics({"q": ["x", "a", "c"]}, QRELS, k=3)
    assert m["ndcg@3"]["q"] == pytest.approx((3 / LOG2_3 + 2 / 2) / IDEAL_DCG_3)
    assert m["condensed_ndcg@3"]["q"] == pytest.approx(1.0)
    assert m["recall@3"]["q"] == pytest.approx(1.0)


def test_condensed_ndcg_from_ir_measures_equals_ndcg_of_the_hand_filtered_ranking():
    """``nDCG(judged_only=True)`` gives exactly what dropping unjudged items by hand and
    cutting after gave, on random rankings that are mostly unjudged."""
    import numpy as np

    rng = np.random.default_rng(7)
    items = [f"i{j}" for j in range(200)]
    qrels = {
        f"q{n}": {str(d): int(g) for d, g in zip(rng.choice(items, 25, replace=False), rng.integers(0, 4, 25))}
        for n in range(40)
    }
    rankings = {q: [str(d) for d in rng.permutation(items)[:150]] for q in qrels}
    for k in (10, 25, 100):
        condensed = per_query_metrics(rankings, qrels, k=k)[f"condensed_ndcg@{k}"]
        filtered = {q: [d for d in rankings[q] if d in qrels[q]][:k] for q in qrels}
        by_hand = per_query_metrics(filtered, qrels, k=k)[f"ndcg@{k}"]
        assert condensed == pytest.approx(by_hand, abs=1e-12)
        assert any(v > 0 for v in condensed.values())


def test_a_query_without_ranking_scores_zero_and_nan_where_nothing_is_judged():
    m = per_query_metrics({"other": ["a"]}, QRELS, k=2)
    assert m["ndcg@2"]["q"] == 0.0 and m["judged@2"]["q"] == 0.0
    assert math.isnan(m["grade0_share@2"]["q"]) and math.isnan(m["avg_grade@2"]["q"])


def test_metrics_at_several_cutoffs_and_nan_aware_means():
    qrels = {"q": QRELS["q"], "r": {"a": 1}}
    m = per_query_metrics_at({"q": ["a", "c", "b"], "r": ["z"]}, qrels, [1, 3])
    assert m["ndcg@1"]["q"] == pytest.approx(1.0) and m["ndcg@3"]["q"] == pytest.approx(1.0)
    assert m["recall@1"]["q"] == pytest.approx(0.5)
    means = mean_metrics(m)
    assert means["ndcg@3"] == pytest.approx(0.5)
    assert means["grade0_share@3"] == pytest.approx(1 / 3)  # r has no judged item: left out


def test_engagement_recall_counts_clicked_or_converted_items_in_the_top_k():
    rankings = {"q": ["a", "b", "z"], "r": ["c"]}
    clicked = {"q": {"a", "z"}, "r": {"d"}}
    m = engagement_metrics(rankings, clicked, {"q": {"z"}}, k=2)
    assert m["engagement_recall@2"] == {"q": 0.5, "r": 0.0}
    assert m["conversion_recall@2"]["q"] == 0.0
    assert math.isnan(m["conversion_recall@2"]["r"])
    assert engagement_metrics(rankings, clicked, {"q": {"z"}}, k=3)["conversion_recall@3"]["q"] == 1.0


def test_grade_distribution_of_the_top_k():
    shares = grade_distribution({"q": ["a", "x", "b", "c"]}, QRELS, k=3, num_grades=4)
    assert shares == pytest.approx({"0": 1 / 3, "1": 0.0, "2": 0.0, "3": 1 / 3, "unjudged": 1 / 3})
