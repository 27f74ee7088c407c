"""What an evaluation measured (:class:`EvaluationResult`): made by :mod:`unisup.evaluation`,
rendered by :mod:`unisup.report`, read back by the push (:mod:`unisup.promotion`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

CANDIDATE = "candidate"


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` measured."""

    table: pa.Table
    per_query: dict[str, dict[str, dict[str, float]]]
    grade_distributions: dict[str, dict[str, float]]
    slices: dict[str, dict[str, list[str]]]
    blessing: dict
    systems: dict[str, str]
    settings: dict = field(default_factory=dict)

    def value(self, metric: str, system: str = CANDIDATE, baseline: str | None = None, slice: str = "all") -> dict:
        """The row of one (system, baseline, metric, slice) as a dict."""
        for row in self.table.to_pylist():
            if (row["system"], row["baseline"], row["metric"], row["slice"]) == (system, baseline, metric, slice):
                return row
        raise KeyError(f"no result for {system} vs {baseline}: {metric} ({slice})")
