"""Quality audit of the teachers against held-out human grades.

For each stage (run on every held-out judged pair) and for the cascade: exact
agreement, within-one agreement and quadratic-weighted Cohen's kappa with the human
grade. The same statistics between the individual raters (rater_1..3) are the
reference a teacher should reach.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict

import numpy as np
from sklearn.metrics import cohen_kappa_score

from unisup import storage
from unisup.config import Config
from unisup.data.sample import load_dataset
from unisup.teachers.backends import Backend
from unisup.teachers.cascade import EscalationRule, decide
from unisup.teachers.labeling import cascade_stages, escalation_rule
from unisup.teachers.training import stage_item_texts

RATERS = ("rater_1", "rater_2", "rater_3")


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


def rater_agreement(judgments, num_grades: int) -> dict:
    """Pairwise agreement between the raters present in ``judgments`` (pairs both graded)."""
    present = [r for r in RATERS if r in judgments.column_names]
    out = {}
    for a, b in itertools.combinations(present, 2):
        x = np.array(judgments[a].to_pylist(), dtype=object)
        y = np.array(judgments[b].to_pylist(), dtype=object)
        both = np.array([u is not None and v is not None for u, v in zip(x, y)], dtype=bool)
        out[f"{a}~{b}"] = agreement(x[both].astype(np.int64), y[both].astype(np.int64), num_grades)
    if out:
        out["mean"] = {
            k: float(np.mean([v[k] for v in out.values() if v[k] is not None])) for k in ("exact", "within_one", "qwk")
        }
    return out


def held_out_scores(cfg: Config, backend: Backend, split: str | None = None):
    """(judgments, stage names, per-stage probabilities) of every stage on a split's judged pairs."""
    dataset = load_dataset(cfg.data)
    judgments = dataset.judgments_for(split or cfg.teachers.audit_split)
    queries, items = judgments["query"].to_pylist(), judgments["product_id"].to_pylist()
    stages = cascade_stages(cfg)
    names = [s.name for s in stages]
    backend.wait_ready(names)
    stage_probs = []
    for stage in stages:
        texts = stage_item_texts(dataset.catalog, stage, items)
        stage_probs.append(backend.predict(stage.name, queries, [texts[i] for i in items]))
    return judgments, names, stage_probs


def audit_scores(
    judgments, names: list[str], stage_probs: list[np.ndarray], rule: EscalationRule, num_grades: int, split: str
) -> dict:
    """The audit figures from per-stage probabilities on judged pairs."""
    truth = np.array(judgments["rating"].to_pylist(), dtype=np.int64)
    cascade = decide(stage_probs, rule)
    k = num_grades
    return {
        "split": split,
        "pairs": len(truth),
        "queries": len(set(judgments["query"].to_pylist())),
        "human_grade_counts": np.bincount(truth, minlength=k).tolist(),
        "stages": {n: agreement(p.argmax(axis=1), truth, k) for n, p in zip(names, stage_probs)},
        "cascade": {
            **agreement(cascade.grades, truth, k),
            "reached": dict(zip(names, cascade.pairs_per_stage)),
            "decided": dict(zip(names, np.bincount(cascade.decided_by, minlength=len(names)).tolist())),
            "agreement_with_last_stage": float(np.mean(cascade.grades == stage_probs[-1].argmax(axis=1))),
        },
        "raters": rater_agreement(judgments, k),
        "rule": asdict(rule),
    }


def quality_audit(cfg: Config, backend: Backend, split: str | None = None, repository: str | None = None) -> dict:
    """Audit every cascade stage and the cascade (its rule as labeling resolves it from the teachers
    ``repository``) on a held-out split's judged pairs."""
    split = split or cfg.teachers.audit_split
    judgments, names, stage_probs = held_out_scores(cfg, backend, split)
    rule = escalation_rule(cfg, repository)
    return audit_scores(judgments, names, stage_probs, rule, cfg.data.num_grades, split)


def format_audit(audit: dict) -> str:
    """The audit as a Markdown table."""
    rows = [(f"stage {n}", a) for n, a in audit["stages"].items()] + [("cascade", audit["cascade"])]
    rows += [(f"humans {n}", a) for n, a in audit["raters"].items()]
    lines = [
        f"Quality audit on {audit['pairs']} judged pairs of {audit['queries']} {audit['split']} queries",
        "",
        "| labeler | exact | within one | QWK |",
        "|---|---|---|---|",
    ]
    for name, a in rows:
        cells = ["-" if a.get(key) is None else f"{a[key]:.3f}" for key in ("exact", "within_one", "qwk")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_audit(audit: dict, uri: str) -> None:
    """The audit as JSON at ``uri`` and as Markdown beside it (``.md``)."""
    storage.write_text(uri, json.dumps(audit, indent=1))
    storage.write_text(uri.rsplit(".", 1)[0] + ".md", format_audit(audit))
