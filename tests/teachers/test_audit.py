"""The quality audit: agreement statistics, per stage, cascade and between raters."""

import numpy as np
import pyarrow as pa

from unisup.teachers.audit import (
    agreement,
    format_audit,
    quality_audit,
    rater_agreement,
    write_audit,
)
from unisup.teachers.backends import InProcessBackend


def test_agreement_statistics():
    truth = np.array([0, 1, 2, 3, 3, 0])
    assert agreement(truth, truth, 4) == {"n": 6, "exact": 1.0, "within_one": 1.0, "qwk": 1.0}
    off = agreement(np.array([1, 1, 2, 3, 0, 0]), truth, 4)
    assert off["exact"] == 4 / 6 and off["within_one"] == 5 / 6 and off["qwk"] < 1.0
    assert agreement(3 - truth, truth, 4)["qwk"] < 0


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
    assert set(audit["stages"]) == {"fast", "precise"}
    assert sum(audit["cascade"]["decided"].values()) == audit["pairs"] == audit["cascade"]["reached"]["fast"]
    for stats in [*audit["stages"].values(), audit["cascade"], audit["raters"]["rater_1~rater_2"]]:
        assert 0 <= stats["exact"] <= stats["within_one"] <= 1
    write_audit(audit, str(tmp_path / "audit.json"))
    assert "| cascade |" in (tmp_path / "audit.md").read_text() and "| humans rater_1~rater_2 |" in format_audit(audit)
