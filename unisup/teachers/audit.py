"""Quality audit of the teachers against held-out human grades, gated on a features-only baseline.

For each stage (run on every held-out judged pair) and for the cascade: exact
agreement, within-one agreement and quadratic-weighted Cohen's kappa with the human
grade, and the condensed nDCG@10 of ranking each query's judged items by expected
grade (over the queries with at least one item above grade 0: the others have
nothing to rank). The same statistics between the individual raters (rater_1..3) are
the reference a teacher should reach.

The audit computes its own **features-only baseline** on the same pairs: a multinomial
logistic regression on the BM25 score and the dense cosine of the packaged encoder,
raw and z-scored within the query's judged items, fitted on the training and
validation judgments. A stage or the cascade more than ``teachers.audit_tolerance``
below it on QWK or condensed nDCG@10 fails the audit; the run reports it and the
blessing names it. A stage whose training the ``max_seconds`` safety net cut is named
in the warnings.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict

import numpy as np

from unisup import storage
from unisup.config import Config
from unisup.data.dataset import load_dataset
from unisup.teachers.agreement import agreement, condensed_ndcg
from unisup.teachers.backends import Backend
from unisup.teachers.cascade import EscalationRule, decide
from unisup.teachers.features import FEATURE_NAMES, featurizer_for
from unisup.teachers.labeling import cascade_stages, escalation_rule
from unisup.teachers.stages import FEATURES_KIND, stage_item_texts

RATERS = ("rater_1", "rater_2", "rater_3")
BASELINE = "features_baseline"


def _baseline_inputs(judgments, featurizer, records: dict[str, str]) -> np.ndarray:
    """BM25 and cosine of each judged pair, raw and z-scored within the query's judged items."""
    queries, items = judgments["query"].to_pylist(), judgments["product_id"].to_pylist()
    raw = featurizer.features(queries, [records[i] for i in items])[
        :, [FEATURE_NAMES.index("bm25"), FEATURE_NAMES.index("cosine")]
    ]
    z = np.zeros_like(raw)
    by_query: dict[str, list[int]] = {}
    for row, q in enumerate(queries):
        by_query.setdefault(q, []).append(row)
    for rows in by_query.values():
        block = raw[rows]
        z[rows] = (block - block.mean(0)) / np.where(block.std(0) > 1e-6, block.std(0), 1.0)
    return np.hstack([raw, z])


def features_baseline(dataset, audited, featurizer, num_grades: int, seed: int = 0) -> np.ndarray:
    """Per-grade probabilities of the features-only baseline on the ``audited`` judgments, fitted on
    the training and validation judgments."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from unisup.data.catalog import item_records

    fit_on = pa.concat_tables([dataset.judgments_for("train"), dataset.judgments_for("validation")])
    judged = pc.unique(
        pa.concat_arrays([fit_on["product_id"].combine_chunks(), audited["product_id"].combine_chunks()])
    )
    catalog = dataset.catalog.filter(pc.is_in(dataset.catalog["product_id"], value_set=judged))
    records = dict(zip(catalog["product_id"].to_pylist(), item_records(catalog)))
    grades = np.array(fit_on["rating"].to_pylist(), dtype=np.int64)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(_baseline_inputs(fit_on, featurizer, records), grades)
    probs = np.zeros((audited.num_rows, num_grades), dtype=np.float32)
    probs[:, model.classes_] = model.predict_proba(_baseline_inputs(audited, featurizer, records))
    return probs


def audit_gate(audit: dict, tolerance: float) -> dict:
    """Which labelers fall more than ``tolerance`` below the features-only baseline."""
    base = audit[BASELINE]
    failures = []
    for who, stats in [*((f"stage {n}", a) for n, a in audit["stages"].items()), ("cascade", audit["cascade"])]:
        for key, label in (("qwk", "QWK"), ("condensed_ndcg@10", "condensed nDCG@10")):
            if stats.get(key) is None or base.get(key) is None:
                continue
            if stats[key] < base[key] - tolerance:
                failures.append(
                    f"{who}: {label} {stats[key]:.3f} is below the features-only baseline's {base[key]:.3f}"
                    f" (tolerance {tolerance})"
                )
    return {"passed": not failures, "failures": failures, "tolerance": tolerance}


def training_budgets(repository: str | None, names: list[str]) -> dict:
    """Per stage: steps done, steps planned and whether ``max_seconds`` cut it, from the repository."""
    from pathlib import Path

    out = {}
    for name in names:
        path = Path(repository or "") / name / "1" / "teacher" / "teacher.json"
        if repository and path.exists():
            record = json.loads(path.read_text()).get("record", {})
            out[name] = {k: record.get(k) for k in ("steps", "planned_steps", "stop_reason", "cut_by_time")}
    return out


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


def held_out_scores(cfg: Config, backend: Backend, split: str | None = None, dataset=None):
    """(judgments, stage names, per-stage probabilities) of every stage on a split's judged pairs
    (of ``dataset``, loaded from ``cfg.data`` when not given)."""
    dataset = dataset or load_dataset(cfg.data)
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


def labeler_scores(judgments, probs: np.ndarray, num_grades: int) -> dict:
    """Agreement with the human grades and condensed nDCG@10 of one labeler's probabilities."""
    truth = np.array(judgments["rating"].to_pylist(), dtype=np.int64)
    return {**agreement(probs.argmax(axis=1), truth, num_grades), "condensed_ndcg@10": condensed_ndcg(judgments, probs)}


def audit_scores(
    judgments,
    names: list[str],
    stage_probs: list[np.ndarray],
    rule: EscalationRule,
    num_grades: int,
    split: str,
    baseline_probs: np.ndarray | None = None,
    tolerance: float = 0.01,
) -> dict:
    """The audit figures from per-stage probabilities on judged pairs, gated on the baseline's."""
    truth = np.array(judgments["rating"].to_pylist(), dtype=np.int64)
    cascade = decide(stage_probs, rule)
    k = num_grades
    audit = {
        "split": split,
        "pairs": len(truth),
        "queries": len(set(judgments["query"].to_pylist())),
        "human_grade_counts": np.bincount(truth, minlength=k).tolist(),
        "stages": {n: labeler_scores(judgments, p, k) for n, p in zip(names, stage_probs)},
        "cascade": {
            **labeler_scores(judgments, cascade.probs, k),
            "reached": dict(zip(names, cascade.pairs_per_stage)),
            "decided": dict(zip(names, np.bincount(cascade.decided_by, minlength=len(names)).tolist())),
            "agreement_with_last_stage": float(np.mean(cascade.grades == stage_probs[-1].argmax(axis=1))),
            # rows: the human grade, columns: the cascade's
            "confusion": np.bincount(truth * k + cascade.grades, minlength=k * k).reshape(k, k).tolist(),
        },
        "raters": rater_agreement(judgments, k),
        "rule": asdict(rule),
    }
    if baseline_probs is not None:
        audit[BASELINE] = labeler_scores(judgments, baseline_probs, k)
        audit["gate"] = audit_gate(audit, tolerance)
    return audit


def quality_audit(cfg: Config, backend: Backend, split: str | None = None, repository: str | None = None) -> dict:
    """Audit every cascade stage and the cascade (its rule as labeling resolves it from the teachers
    ``repository``) on a held-out split's judged pairs."""
    split = split or cfg.teachers.audit_split
    dataset = load_dataset(cfg.data)
    judgments, names, stage_probs = held_out_scores(cfg, backend, split, dataset)
    rule = escalation_rule(cfg, repository)
    baseline = features_baseline(
        dataset, judgments, featurizer_for(dataset.catalog, cfg.channels), cfg.data.num_grades, cfg.teachers.seed
    )
    audit = audit_scores(
        judgments, names, stage_probs, rule, cfg.data.num_grades, split, baseline, cfg.teachers.audit_tolerance
    )
    audit["budgets"] = training_budgets(repository, names)
    audit["warnings"] = [
        f"stage {name}: the max_seconds safety net cut its training at {b['steps']} of {b['planned_steps']} steps"
        for name, b in audit["budgets"].items()
        if b.get("cut_by_time")
    ]
    audit["kinds"] = {s.name: s.kind for s in cascade_stages(cfg)}
    audit["feature_stages"] = [s.name for s in cascade_stages(cfg) if s.kind == FEATURES_KIND]
    return audit


def format_audit(audit: dict) -> str:
    """The audit as a Markdown table."""
    rows = [(f"stage {n}", a) for n, a in audit["stages"].items()] + [("cascade", audit["cascade"])]
    if BASELINE in audit:
        rows.append(("features-only baseline (logistic regression)", audit[BASELINE]))
    rows += [(f"humans {n}", a) for n, a in audit["raters"].items()]
    lines = [
        f"Quality audit on {audit['pairs']} judged pairs of {audit['queries']} {audit['split']} queries",
        "",
        "| labeler | exact | within one | QWK | condensed nDCG@10 |",
        "|---|---|---|---|---|",
    ]
    for name, a in rows:
        keys = ("exact", "within_one", "qwk", "condensed_ndcg@10")
        cells = ["-" if a.get(key) is None else f"{a[key]:.3f}" for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gate = audit.get("gate")
    if gate:
        lines += ["", "audit gate: " + ("passed" if gate["passed"] else "FAILED: " + "; ".join(gate["failures"]))]
    lines += [f"warning: {w}" for w in audit.get("warnings", [])]
    return "\n".join(lines) + "\n"


def write_audit(audit: dict, uri: str) -> None:
    """The audit as JSON at ``uri`` and as Markdown beside it (``.md``)."""
    storage.write_text(uri, json.dumps(audit, indent=1))
    storage.write_text(uri.rsplit(".", 1)[0] + ".md", format_audit(audit))
