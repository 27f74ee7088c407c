"""Agreement statistics of grade vectors and the condensed nDCG of judged items."""

import numpy as np
import pyarrow as pa

from unisup.teachers.agreement import agreement, condensed_ndcg


def test_agreement_statistics():
    truth = np.array([0, 1, 2, 3, 3, 0])
    assert agreement(truth, truth, 4) == {"n": 6, "exact": 1.0, "within_one": 1.0, "qwk": 1.0}
    off = agreement(np.array([1, 1, 2, 3, 0, 0]), truth, 4)
    assert off["exact"] == 4 / 6 and off["within_one"] == 5 / 6 and off["qwk"] < 1.0
    assert agreement(3 - truth, truth, 4)["qwk"] < 0


def test_condensed_ndcg_ranks_judged_items_by_expected_grade():
    judgments = pa.table(
        {"query": ["a", "a", "a", "b", "b"], "product_id": ["1", "2", "3", "4", "5"], "rating": [3, 0, 1, 0, 0]}
    )
    right = np.eye(4)[[3, 0, 1, 0, 0]]
    assert condensed_ndcg(judgments, right) == 1.0  # query b has nothing above grade 0: not counted
    assert condensed_ndcg(judgments, np.eye(4)[[0, 3, 1, 0, 0]]) < 1.0
