"""The cascade: stage k+1 sees only the pairs stage k is uncertain about.

The escalation rule is configurable: the highest grade probability below a
threshold (``max_prob``), P(grade >= r0) close to 1/2 (``boundary``: the pair sits
near the relevance boundary), or ``either``. The last stage decides every pair it sees.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from unisup.config import ConfigError
from unisup.teachers.backends import Backend

RULES = ("max_prob", "boundary", "either")
ESCALATION_FILE = "escalation.json"  # in a teachers repository: the thresholds calibrated on validation


@dataclass(frozen=True)
class EscalationRule:
    """When a stage passes a pair on to the next stage."""

    rule: str = "either"
    max_prob_threshold: float = 0.7
    boundary_margin: float = 0.3
    relevance_threshold: int = 2

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"labeling.escalate_rule must be one of {', '.join(RULES)}, got {self.rule!r}")

    def uncertain(self, probs: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows (pairs) of ``probs`` (n, K) to escalate."""
        low_confidence = probs.max(axis=1) < self.max_prob_threshold
        near_boundary = np.abs(probs[:, self.relevance_threshold :].sum(axis=1) - 0.5) < self.boundary_margin
        if self.rule == "max_prob":
            return low_confidence
        if self.rule == "boundary":
            return near_boundary
        return low_confidence | near_boundary


@dataclass
class CascadeResult:
    """Per pair: grade, probabilities and deciding stage; per stage: scores (NaN where not run), cost."""

    grades: np.ndarray
    probs: np.ndarray
    decided_by: np.ndarray  # index of the deciding stage
    stage_probs: list[np.ndarray]
    pairs_per_stage: list[int] = field(default_factory=list)
    seconds_per_stage: list[float] = field(default_factory=list)


def decide(stage_probs: Sequence[np.ndarray], rule: EscalationRule) -> CascadeResult:
    """The cascade's decisions from per-stage probabilities (NaN rows: stage not run).

    Used on scores of stages that already ran on every pair (audit, cost/accuracy
    sweeps) and by :func:`run_cascade` on its partial scores: the pair goes to the
    first stage that is certain about it, or to the last stage.
    """
    n = stage_probs[0].shape[0]
    decided_by = np.full(n, -1, dtype=np.int64)
    pending = np.ones(n, dtype=bool)
    reached = []
    for index, probs in enumerate(stage_probs):
        reached.append(int(pending.sum()))
        if not pending.any():
            break
        if np.isnan(probs[pending]).any():
            raise ValueError(f"stage {index} has no scores for pairs that reach it")
        last = index == len(stage_probs) - 1
        decide_here = pending.copy() if last else pending & ~rule.uncertain(np.nan_to_num(probs))
        decided_by[decide_here] = index
        pending &= ~decide_here
    reached += [0] * (len(stage_probs) - len(reached))
    probs = (
        np.stack([stage_probs[s][i] for i, s in enumerate(decided_by)]) if n else np.zeros((0, stage_probs[0].shape[1]))
    )
    return CascadeResult(
        probs.argmax(axis=1).astype(np.int8), probs.astype(np.float32), decided_by, list(stage_probs), reached
    )


def run_cascade(
    queries: Sequence[str],
    items: Sequence[str],
    stage_texts: Sequence[dict[str, str]],
    stages: Sequence[str],
    backend: Backend,
    rule: EscalationRule,
    num_grades: int,
) -> CascadeResult:
    """Label pairs (query, item id) with the cascade; ``stage_texts[k]`` maps item ids to stage k's text."""
    n = len(queries)
    stage_probs = [np.full((n, num_grades), np.nan, dtype=np.float32) for _ in stages]
    pending = np.ones(n, dtype=bool)
    seconds = []
    for index, stage in enumerate(stages):
        started = time.perf_counter()
        rows = np.flatnonzero(pending)
        if len(rows):
            probs = backend.predict(stage, [queries[i] for i in rows], [stage_texts[index][items[i]] for i in rows])
            if probs.shape != (len(rows), num_grades):
                raise ValueError(
                    f"stage {stage}: expected probabilities of shape {(len(rows), num_grades)}, got {probs.shape}"
                )
            stage_probs[index][rows] = probs
            if index < len(stages) - 1:
                pending[rows[~rule.uncertain(probs)]] = False
        seconds.append(time.perf_counter() - started)
    result = decide(stage_probs, rule)
    result.seconds_per_stage = seconds
    return result


def calibrate_escalation(stage_probs: Sequence[np.ndarray], target_share: float, relevance_threshold: int) -> dict:
    """Per rule, the most escalating threshold that sends at most ``target_share`` of the pairs to the
    last stage (stages scored on every pair), with the share and the agreement with the last stage."""
    reference = stage_probs[-1].argmax(axis=1)
    grid = np.round(np.arange(0.0, 1.0001, 0.005), 3)
    out = {"target_share": target_share, "pairs": int(len(reference))}
    for rule, key in (("max_prob", "max_prob_threshold"), ("boundary", "boundary_margin")):
        best = None
        for value in grid:
            result = decide(stage_probs, EscalationRule(rule, value, value, relevance_threshold))
            share = result.pairs_per_stage[-1] / max(1, len(reference))
            if share > target_share:
                break
            best = {
                key: float(value),
                "share": round(share, 4),
                "agreement": round(float(np.mean(result.grades == reference)), 4),
            }
        out[rule] = best
    return out


def calibrated_rule(calibration: dict, relevance_threshold: int) -> EscalationRule:
    """The rule of a :func:`calibrate_escalation` result that agrees best with the last stage."""
    found = [(rule, calibration[rule]) for rule in ("max_prob", "boundary") if calibration.get(rule)]
    if not found:
        raise ValueError(f"no escalation threshold keeps within the target share {calibration.get('target_share')}")
    rule, best = max(found, key=lambda item: item[1]["agreement"])
    return EscalationRule(
        rule, best.get("max_prob_threshold", 0.0), best.get("boundary_margin", 0.0), relevance_threshold
    )
