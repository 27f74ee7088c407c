"""The quality audit: per stage, cascade and between raters, gated on the features-only baseline."""

import pyarrow as pa

from unisup.teachers.audit import (
    audit_gate,
    format_audit,
    quality_audit,
    rater_agreement,
    write_audit,
)
from unisup.teachers.backends import InProcessBackend


def test_rater_agreement_uses_pairs_both_raters_graded():
    judgments = pa.table({"rater_1": [0, 1, 3, None], "rater_2": [0, 1, 2, 3], "rater_3": [0, 2, 3, 3]})
    stats = rater_agreement(judgments, 4)
    assert stats["rater_1~rater_2"]["n"] == 3 and stats["rater_1~rater_2"]["exact"] == 2 / 3
    assert stats["rater_2~rater_3"]["n"] == 4 and "mean" in stats


def test_quality_audit_on_held_out_pairs(teacher_config, trained_teachers, tmp_path):
    audit = quality_audit(
        teacher_config, InProcessBackend(trained_teachers["repository"]), "test", trained_teachers["repository"]
    )
    assert audit["pairs"] > 0 and audit["queries"] == 3
    assert set(audit["stages"]) == {"features", "fast", "precise"} and audit["feature_stages"] == ["features"]
    assert sum(audit["cascade"]["decided"].values()) == audit["pairs"] == audit["cascade"]["reached"]["features"]
    for stats in [*audit["stages"].values(), audit["cascade"], audit["raters"]["rater_1~rater_2"]]:
        assert 0 <= stats["exact"] <= stats["within_one"] <= 1
    for stats in [*audit["stages"].values(), audit["cascade"], audit["features_baseline"]]:
        assert 0 <= stats["condensed_ndcg@10"] <= 1 and stats["qwk"] is not None
    assert audit["budgets"]["precise"]["planned_steps"] == 8 and audit["warnings"] == []
    gate = audit["gate"]
    base = audit["features_baseline"]
    below = [
        name
        for name, stats in [*audit["stages"].items(), ("cascade", audit["cascade"])]
        if stats["qwk"] < base["qwk"] - 0.01 or stats["condensed_ndcg@10"] < base["condensed_ndcg@10"] - 0.01
    ]
    assert gate["passed"] == (not below) and len(gate["failures"]) >= len(below)
    write_audit(audit, str(tmp_path / "audit.json"))
    text = (tmp_path / "audit.md").read_text()
    assert "| cascade |" in text and "| humans rater_1~rater_2 |" in format_audit(audit)
    assert "features-only baseline" in text and "audit gate:" in text


def test_audit_gate_names_each_labeler_below_the_baseline():
    audit = {
        "features_baseline": {"qwk": 0.6, "condensed_ndcg@10": 0.9},
        "stages": {
            "features": {"qwk": 0.7, "condensed_ndcg@10": 0.95},
            "precise": {"qwk": 0.55, "condensed_ndcg@10": 0.9},
        },
        "cascade": {"qwk": 0.65, "condensed_ndcg@10": 0.85},
    }
    gate = audit_gate(audit, 0.01)
    assert not gate["passed"] and len(gate["failures"]) == 2
    assert gate["failures"][0].startswith("stage precise: QWK 0.550") and gate["failures"][1].startswith(
        "cascade: condensed"
    )
    assert audit_gate(audit, 0.2)["passed"]
