"""Escalation rules and cascade decisions."""

import json

import numpy as np
import pytest

from unisup.config import ConfigError
from unisup.teachers.backends import InProcessBackend
from unisup.teachers.cascade import EscalationRule, calibrate_escalation, calibrated_rule, decide, run_cascade

CONFIDENT_IRRELEVANT = [0.9, 0.05, 0.03, 0.02]
UNSURE_LOW = [0.4, 0.35, 0.15, 0.1]
AT_BOUNDARY = [0.05, 0.4, 0.5, 0.05]
CONFIDENT_RELEVANT = [0.0, 0.02, 0.03, 0.95]


def test_rules():
    probs = np.array([CONFIDENT_IRRELEVANT, UNSURE_LOW, AT_BOUNDARY, CONFIDENT_RELEVANT])
    assert EscalationRule("max_prob", 0.7).uncertain(probs).tolist() == [False, True, True, False]
    assert EscalationRule("boundary", boundary_margin=0.2).uncertain(probs).tolist() == [False, False, True, False]
    assert EscalationRule("either", 0.45, 0.2).uncertain(probs).tolist() == [False, True, True, False]
    with pytest.raises(ConfigError, match="labeling.escalate_rule must be one of"):
        EscalationRule("coin_flip")


def test_decide_takes_the_first_certain_stage():
    fast = np.array([CONFIDENT_IRRELEVANT, UNSURE_LOW, AT_BOUNDARY], dtype=np.float32)
    precise = np.array([[np.nan] * 4, CONFIDENT_RELEVANT, UNSURE_LOW], dtype=np.float32)
    result = decide([fast, precise], EscalationRule("max_prob", 0.7))
    assert result.decided_by.tolist() == [0, 1, 1]
    assert result.grades.tolist() == [0, 3, 0]
    assert result.pairs_per_stage == [3, 2]
    np.testing.assert_allclose(result.probs[1], CONFIDENT_RELEVANT)
    with pytest.raises(ValueError, match="no scores"):
        decide([fast, np.full((3, 4), np.nan, dtype=np.float32)], EscalationRule("max_prob", 0.7))


def test_run_cascade_sends_only_uncertain_pairs_on(trained_teachers):
    backend = InProcessBackend(trained_teachers["repository"])
    queries = ["usb cable", "laptop", "red shoes", "tv", "mouse"]
    items = ["a", "b", "c", "d", "e"]
    records = {i: json.dumps({"title": f"{i} item title", "description": "long description"}) for i in items}
    texts = [{i: f"{i} item title" for i in items}, records]  # the stacked precise stage reads item records
    rule = EscalationRule("max_prob", 0.5)
    result = run_cascade(queries, items, texts, ["fast", "precise"], backend, rule, 4)
    fast = backend.predict("fast", queries, texts[0].values())
    escalated = rule.uncertain(fast)
    assert result.pairs_per_stage == [5, int(escalated.sum())]
    assert np.isnan(result.stage_probs[1][~escalated]).all() and not np.isnan(result.stage_probs[1][escalated]).any()
    np.testing.assert_allclose(result.stage_probs[0], fast, atol=1e-5)
    assert len(result.seconds_per_stage) == 2


def test_calibrate_escalation_picks_the_most_escalating_threshold_within_the_share():
    rng = np.random.default_rng(0)
    fast = rng.dirichlet(np.ones(4) * 0.5, size=400).astype(np.float32)
    precise = rng.dirichlet(np.ones(4) * 0.5, size=400).astype(np.float32)
    out = calibrate_escalation([fast, precise], 0.3, relevance_threshold=2)
    for rule, key in (("max_prob", "max_prob_threshold"), ("boundary", "boundary_margin")):
        chosen = out[rule]
        assert chosen["share"] <= 0.3
        value = chosen[key]
        assert np.mean(EscalationRule(rule, value, value).uncertain(fast)) == pytest.approx(chosen["share"])
        above = value + 0.005
        assert np.mean(EscalationRule(rule, above, above).uncertain(fast)) > 0.3
        result = decide([fast, precise], EscalationRule(rule, value, value))
        assert chosen["agreement"] == pytest.approx(np.mean(result.grades == precise.argmax(1)), abs=1e-4)


def test_calibrated_rule_is_the_one_that_agrees_best_with_the_last_stage():
    calibration = {
        "target_share": 0.3,
        "max_prob": {"max_prob_threshold": 0.6, "share": 0.29, "agreement": 0.95},
        "boundary": {"boundary_margin": 0.2, "share": 0.3, "agreement": 0.97},
    }
    assert calibrated_rule(calibration, 2) == EscalationRule("boundary", 0.0, 0.2, 2)
    calibration["boundary"] = None
    assert calibrated_rule(calibration, 2) == EscalationRule("max_prob", 0.6, 0.0, 2)
    with pytest.raises(ValueError, match="target share"):
        calibrated_rule({"target_share": 0.3, "max_prob": None, "boundary": None}, 2)
