"""The fusion weights of the unified target, chosen on the validation queries.

The unified target is ``t = g + a * prior + b * [relevant] * e - c * [not relevant] * prior``
(``unisup.fusion.fused_target``). This benchmark trains the unified student once per setting of
``a`` (``fusion.prior_weight``), ``c`` (``fusion.hard_negative_weight``) and the grade gains, on
the labels and engagement of the newest ``make demo`` run (as ``bench.presets`` does; the same
``BENCH_LABELS`` / ``BENCH_ENGAGEMENT`` overrides), with the local profile's budget and early
stopping. Each student retrieves the **validation** queries over the full catalog; the setting
with the best validation nDCG@10 (ties: the lower grade-0 share) is chosen. Only the chosen
setting and the profile's current one are then scored on the test queries, so the test split
plays no part in the choice. ``BENCH_SWEEP_SEEDS`` (default ``0``; e.g. ``0,1,2``) trains every
setting once per seed and ranks settings by their medians.
"""

from __future__ import annotations

import os

from bench.sweeps import run_sweep

SEEDS = [int(s) for s in os.environ.get("BENCH_SWEEP_SEEDS", "0").split(",")]
LINEAR_GAINS = "[0.0,1.0,2.0,3.0]"
STEEP_GAINS = "[0.0,1.0,3.0,7.0]"
# (prior_weight a, hard_negative_weight c, grade gains); the profile's setting is the first.
# One axis at a time around it (a, then c), and the steeper gains with and without the prior.
SETTINGS = [
    (0.5, 1.0, LINEAR_GAINS),
    (0.0, 1.0, LINEAR_GAINS),
    (0.25, 1.0, LINEAR_GAINS),
    (1.0, 1.0, LINEAR_GAINS),
    (0.5, 0.0, LINEAR_GAINS),
    (0.5, 2.0, LINEAR_GAINS),
    (0.5, 1.0, STEEP_GAINS),
    (0.0, 1.0, STEEP_GAINS),
]


def setting_name(a: float, c: float, gains: str) -> str:
    return f"a={a:g} c={c:g} gains={'steep' if gains == STEEP_GAINS else 'linear'}"


def overrides(a: float, c: float, gains: str) -> list[str]:
    return [
        "fusion.preset=unified",
        f"fusion.prior_weight={a}",
        f"fusion.hard_negative_weight={c}",
        f"fusion.grade_gains={gains}",
    ]


def run() -> dict:
    settings = {setting_name(*s): overrides(*s) for s in SETTINGS}
    return run_sweep(settings, setting_name(*SETTINGS[0]), SEEDS)


if __name__ == "__main__":
    from bench.harness import run as run_named

    run_named("fusion_sweep")
