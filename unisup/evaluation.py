"""Offline evaluation of a candidate retriever against baselines, with a blessing.

A *system* is anything that ranks queries: a bi-encoder with its index
(:class:`BiEncoderSystem`), a retrieval channel such as BM25 (:func:`channel_system`),
or precomputed rankings (:func:`precomputed_system`). Every system retrieves ``depth``
items for every query, and is judged

- by **human** judgments (graded): nDCG@k, condensed nDCG@k, judged@k, recall@k,
  average grade@k, grade-0 share@k (``unisup.metrics``, ir-measures underneath);
- by held-out **engagement** (``schemas.ENGAGEMENT``): engagement_recall@k (clicked
  or converted items retrieved in the top k) and conversion_recall@k.

Statistics: per-query paired bootstrap (scipy) of candidate minus each baseline, with
a percentile confidence interval and a two-sided p-value (the share of the
null-centred bootstrap means at least as far from zero as the observed mean delta).
Every system's own value carries the bootstrap CI of its mean.

Slices: ``all``, ``head`` and ``tail``. Queries are ordered by frequency, most
frequent first (ties by query text); the first ``ceil(head_fraction * n)`` are the
head, the rest the tail. Frequency is the query's impressions in the engagement data
when engagement is given (0 for a judged query absent from it), otherwise its number
of judged items.

The blessing is the conjunction of the gates in ``EvaluationConfig`` (each with the
observed figure, the threshold and a sentence saying why it passed or failed), and of the
teacher audit's gate when an audit is given. :func:`blessing_of` derives it from the results
alone, so the push re-derives it from the results JSON with its own gate settings. The
blessing file is bound to what was evaluated: it records the content digests of the
candidate's model and index and of the results JSON. Before ranking anything,
:func:`run_evaluation` checks that every index was built by its model on the configured
catalog.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from unisup import code_version, storage
from unisup.config import Config, ConfigError, EvaluationConfig, to_dict
from unisup.errors import InputError
from unisup.evaluation_result import CANDIDATE, EvaluationResult
from unisup.metrics import engagement_metrics, grade_distribution, metric_names, per_query_metrics_at
from unisup.schemas import EVAL_RESULTS, validate

HUMAN = "human"
ENGAGEMENT = "engagement"
SLICES = ("all", "head", "tail")
RESULTS_FILE = "results.parquet"
JSON_FILE = "results.json"
REPORT_FILE = "report.html"
BLESSING_FILE = "blessing.json"
AUDIT_KEYS = ("pairs", "split", "cascade", "features_baseline", "gate")  # what teacher_audit_gate reads


# ---------------------------------------------------------------- systems


@dataclass
class RankingSystem:
    """A named system: ``rank(queries, depth)`` returns one ranked list of item ids per query."""

    name: str
    rank: Callable[[Sequence[str], int], list[list[str]]]
    kind: str = "function"

    def rankings(self, queries: Sequence[str], depth: int) -> dict[str, list[str]]:
        return dict(zip(queries, self.rank(list(queries), depth), strict=True))


def channel_system(name: str, channel) -> RankingSystem:
    """A retrieval channel (``unisup.channels``: BM25, dense, RRF) as a system."""
    return RankingSystem(name, lambda qs, k: [[item for item, _ in r] for r in channel.search(qs, k)], kind="channel")


def precomputed_system(name: str, rankings: Mapping[str, Sequence[str]]) -> RankingSystem:
    """Rankings computed elsewhere, {query: [item ids, best first]}; a query without one ranks nothing."""
    return RankingSystem(name, lambda qs, k: [list(rankings.get(q, []))[:k] for q in qs], kind="precomputed")


def biencoder_system(name: str, model_uri: str, index_uri: str, batch_size: int = 64) -> RankingSystem:
    """A bi-encoder folder's query tower searching an index folder."""
    from unisup.biencoder.tower import load_biencoder
    from unisup.index import ItemIndex

    with storage.local_copy(model_uri) as local:
        query_tower, _ = load_biencoder(local)
    index = ItemIndex.load(index_uri)

    def rank(queries: Sequence[str], depth: int) -> list[list[str]]:
        hits = index.search(query_tower.encode(queries, batch_size=batch_size), depth)
        return [[item for item, _ in h] for h in hits]

    return RankingSystem(name, rank, kind="biencoder")


# ---------------------------------------------------------------- inputs


@dataclass
class EngagementTargets:
    """Held-out engagement as retrieval targets: per query, clicked-or-converted items,
    converted items, and the query's impressions (its frequency)."""

    clicked: dict[str, set[str]]
    converted: dict[str, set[str]]
    frequency: dict[str, float]


def engagement_targets(table: pa.Table, max_queries: int) -> EngagementTargets:
    """Targets from an ENGAGEMENT table: queries with at least one click or conversion,
    the ``max_queries`` most frequent (by impressions; ties by query text)."""
    import duckdb

    con = duckdb.connect()
    con.register("engagement", table)
    result = con.execute(
        """
        SELECT query,
               SUM(impressions)::DOUBLE AS impressions,
               LIST(item_id ORDER BY item_id) FILTER (WHERE clicks > 0 OR conversions > 0) AS engaged,
               LIST(item_id ORDER BY item_id) FILTER (WHERE conversions > 0) AS converted
        FROM engagement GROUP BY query
        ORDER BY impressions DESC, query
        """
    ).fetchall()
    con.close()
    frequency = {q: imp for q, imp, _, _ in result}
    engaged = [(q, set(e or []), set(c or [])) for q, _, e, c in result if e]
    engaged = engaged[:max_queries]
    return EngagementTargets({q: e for q, e, _ in engaged}, {q: c for q, _, c in engaged if c}, frequency)


def split_slices(queries: Sequence[str], frequency: Mapping[str, float], head_fraction: float) -> dict[str, list[str]]:
    """{all, head, tail}: the most frequent ``ceil(head_fraction * n)`` queries are the head."""
    ordered = sorted(queries, key=lambda q: (-frequency.get(q, 0.0), q))
    n_head = math.ceil(head_fraction * len(ordered))
    return {"all": ordered, "head": ordered[:n_head], "tail": ordered[n_head:]}


# ---------------------------------------------------------------- statistics


@dataclass
class Estimate:
    """A mean over queries with its bootstrap CI; for a comparison also the p-value."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float | None = None


def _bootstrap_means(values: np.ndarray, n_resamples: int, confidence: float, seed: int):
    from scipy.stats import bootstrap

    if len(values) < 2 or np.ptp(values) == 0:
        mean = float(values.mean()) if len(values) else float("nan")
        return mean, mean, np.full(n_resamples, mean)
    res = bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high), res.bootstrap_distribution


def mean_with_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of the non-NaN values with a percentile bootstrap CI (none when ``n_resamples`` is 0)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if len(arr) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    if n_resamples == 0:
        return Estimate(float(arr.mean()), float("nan"), float("nan"), len(arr))
    low, high, _ = _bootstrap_means(arr, n_resamples, confidence, seed)
    return Estimate(float(arr.mean()), low, high, len(arr))


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean per-query delta (candidate minus baseline) over queries where both are defined,
    its percentile bootstrap CI, and the two-sided bootstrap p-value of "no difference"."""
    cand, base = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if cand.shape != base.shape:
        raise ValueError(
            f"paired bootstrap needs one value per query in both systems, got {cand.shape} and {base.shape}"
        )
    deltas = (cand - base)[~(np.isnan(cand) | np.isnan(base))]
    if len(deltas) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, float("nan"))
    mean = float(deltas.mean())
    low, high, means = _bootstrap_means(deltas, n_resamples, confidence, seed)
    extreme = np.abs(means - mean) >= abs(mean) - 1e-12
    p_value = float((1 + extreme.sum()) / (1 + len(means))) if mean != 0 else 1.0
    return Estimate(mean, low, high, len(deltas), p_value)


# ---------------------------------------------------------------- evaluation


def metrics_to_measure(cfg: EvaluationConfig, with_engagement: bool) -> set[str]:
    """The metrics :func:`evaluate` measures: the human ones at every cutoff, and the engagement ones."""
    names = {m for k in cfg.cutoffs for m in metric_names(k)}
    if with_engagement:
        names |= {f"{m}@{k}" for m in ("engagement_recall", "conversion_recall") for k in cfg.cutoffs}
    return names


def _judged_by(metric: str) -> str:
    return ENGAGEMENT if metric.startswith(("engagement_recall", "conversion_recall")) else HUMAN


def evaluate(
    candidate: RankingSystem,
    baselines: Sequence[RankingSystem],
    qrels: Mapping[str, Mapping[str, int]],
    cfg: EvaluationConfig,
    relevance_threshold: int = 2,
    num_grades: int = 4,
    engagement: EngagementTargets | None = None,
) -> EvaluationResult:
    """Rank every query with every system, score, compare the candidate with each baseline
    (paired bootstrap per metric and slice) and apply the blessing gates."""
    if not qrels:
        raise InputError("no judged queries to evaluate on")
    names = [candidate.name] + [b.name for b in baselines]
    if len(set(names)) != len(names):
        raise InputError(f"system names must be unique, got {names}")
    check_gate_settings(cfg, metrics_to_measure(cfg, engagement is not None), names[1:])
    depth = max(cfg.depth, max(cfg.cutoffs))
    human_queries = sorted(qrels)
    engagement_queries = sorted(engagement.clicked) if engagement else []
    all_queries = sorted(set(human_queries) | set(engagement_queries))
    frequency = engagement.frequency if engagement else {q: float(len(qrels[q])) for q in human_queries}
    slices = {HUMAN: split_slices(human_queries, frequency, cfg.head_fraction)}
    if engagement_queries:
        slices[ENGAGEMENT] = split_slices(engagement_queries, frequency, cfg.head_fraction)

    per_query: dict[str, dict[str, dict[str, float]]] = {}
    grades: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for system in [candidate, *baselines]:
        start = time.perf_counter()
        rankings = system.rankings(all_queries, depth)
        seconds[system.name] = time.perf_counter() - start
        scores = per_query_metrics_at(rankings, {q: qrels[q] for q in human_queries}, cfg.cutoffs, relevance_threshold)
        if engagement_queries:
            for k in cfg.cutoffs:
                scores.update(engagement_metrics(rankings, engagement.clicked, engagement.converted, k))
        per_query[system.name] = scores
        grades[system.name] = grade_distribution(rankings, qrels, cfg.cutoffs[0], num_grades)

    rows = []
    boot = {"n_resamples": cfg.n_bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}
    for metric in per_query[candidate.name]:
        judged_by = _judged_by(metric)
        for slice_name, queries in slices[judged_by].items():
            for system in names:
                values = [per_query[system][metric][q] for q in queries]
                est = mean_with_ci(values, **boot)
                rows.append(_row(system, None, metric, slice_name, judged_by, est, delta=None))
            for base in names[1:]:
                est = paired_bootstrap(
                    [per_query[candidate.name][metric][q] for q in queries],
                    [per_query[base][metric][q] for q in queries],
                    **boot,
                )
                cand_mean = mean_with_ci([per_query[candidate.name][metric][q] for q in queries], n_resamples=0).value
                rows.append(
                    _row(candidate.name, base, metric, slice_name, judged_by, est, delta=est.value, value=cand_mean)
                )
    table = validate(
        pa.Table.from_pylist(rows, schema=EVAL_RESULTS.arrow_schema()), EVAL_RESULTS, "evaluation"
    ).accepted
    result = EvaluationResult(
        table=table,
        per_query=per_query,
        grade_distributions=grades,
        slices=slices,
        blessing={},
        systems={candidate.name: candidate.kind, **{b.name: b.kind for b in baselines}},
        settings={
            "evaluation": to_dict(cfg),
            "relevance_threshold": relevance_threshold,
            "num_grades": num_grades,
            "rank_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "human_queries": len(human_queries),
            "engagement_queries": len(engagement_queries),
        },
    )
    result.blessing = blessing_of(result, cfg)
    return result


def _row(system, baseline, metric, slice_name, judged_by, est: Estimate, delta, value=None) -> dict:
    def clean(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    return {
        "system": system,
        "baseline": baseline,
        "metric": metric,
        "slice": slice_name,
        "judged_by": judged_by,
        "value": float(est.value if value is None else value),
        "delta": clean(delta),
        "ci_low": clean(est.ci_low),
        "ci_high": clean(est.ci_high),
        "p_value": clean(est.p_value),
        "n_queries": est.n,
    }


# ---------------------------------------------------------------- blessing


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x


def _gate(passed: bool, observed, threshold, reason: str) -> dict:
    return {"passed": bool(passed), "observed": observed, "threshold": threshold, "reason": reason}


def _baseline_gates(
    result: EvaluationResult, candidate: str, base: str, cfg: EvaluationConfig, has_engagement: bool
) -> dict:
    k = cfg.cutoffs[0]
    gates = {}
    row = result.value(cfg.gate_metric, candidate, base)
    low, high = _or_nan(row["ci_low"]), _or_nan(row["ci_high"])
    ok = low >= cfg.gate_min_delta_ci_low
    gates[f"{cfg.gate_metric}_delta_ci_low_vs_{base}"] = _gate(
        ok,
        low,
        cfg.gate_min_delta_ci_low,
        f"{cfg.gate_metric} delta vs {base} is {row['delta']:+.4f}, CI [{low:+.4f}, {high:+.4f}]: "
        f"lower bound {'>=' if ok else '<'} {cfg.gate_min_delta_ci_low}",
    )
    g0 = result.value(f"grade0_share@{k}", candidate, base)
    g0_delta = g0["delta"] or 0.0
    ok = g0_delta <= cfg.gate_max_grade0_increase
    gates[f"grade0_share@{k}_vs_{base}"] = _gate(
        ok,
        g0_delta,
        cfg.gate_max_grade0_increase,
        f"grade-0 share@{k} changes by {g0_delta:+.4f} vs {base} (paired over the {g0['n_queries']} queries "
        f"with judged items in both top {k}) ({'within' if ok else 'above'} the allowed "
        f"+{cfg.gate_max_grade0_increase})",
    )
    name = f"engagement_recall@{k}_vs_{base}"
    if not has_engagement:
        gates[name] = _gate(
            True,
            None,
            -cfg.gate_max_engagement_drop,
            f"engagement recall vs {base} not gated: no held-out engagement with clicks was given",
        )
        return gates
    cand_value = result.value(f"engagement_recall@{k}", candidate)["value"]
    base_value = result.value(f"engagement_recall@{k}", base)["value"]
    change = (cand_value - base_value) / base_value if base_value > 0 else 0.0
    ok = change >= -cfg.gate_max_engagement_drop
    gates[name] = _gate(
        ok,
        change,
        -cfg.gate_max_engagement_drop,
        f"engagement recall@{k} {cand_value:.4f} vs {base} {base_value:.4f}: relative change {change:+.2%} "
        f"({'within' if ok else 'beyond'} the allowed -{cfg.gate_max_engagement_drop:.0%})",
    )
    return gates


def check_gate_settings(cfg: EvaluationConfig, measured: set[str], baselines: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless the gates' metrics are among ``measured`` and the gated
    baselines among ``baselines``."""
    k = cfg.cutoffs[0]
    for key, metric in (("evaluation.gate_metric", cfg.gate_metric), ("evaluation.cutoffs", f"grade0_share@{k}")):
        if metric not in measured:
            raise ConfigError(f"{key} {metric!r} is not measured; measured: {', '.join(sorted(measured))}")
    unknown = [b for b in cfg.gate_baselines if b not in baselines]
    if unknown:
        raise ConfigError(f"evaluation.gate_baselines names unknown systems {unknown}; systems: {', '.join(baselines)}")


def bless(
    result: EvaluationResult, candidate: str, baselines: Sequence[str], cfg: EvaluationConfig, has_engagement: bool
) -> dict:
    """``{"blessed", "reasons", "gates", "evidence"}`` from the gates of ``cfg``: the reasons
    are the failed gates' when any failed, otherwise every gate's."""
    check_gate_settings(cfg, set(result.per_query[candidate]), baselines)
    gated = list(cfg.gate_baselines) or list(baselines)
    n_queries = result.settings["human_queries"]
    enough = n_queries >= cfg.gate_min_queries
    gates = {
        "min_queries": _gate(
            enough,
            n_queries,
            cfg.gate_min_queries,
            f"{n_queries} judged queries {'>=' if enough else '<'} the {cfg.gate_min_queries} required",
        )
    }
    for base in gated:
        gates.update(_baseline_gates(result, candidate, base, cfg, has_engagement))
    failed = [g["reason"] for g in gates.values() if not g["passed"]]
    rows = [r for r in result.table.to_pylist() if r["slice"] == "all"]
    evidence = {
        "candidate": candidate,
        "baselines": list(baselines),
        "gated_baselines": gated,
        "candidate_metrics": {
            r["metric"]: r["value"] for r in rows if r["system"] == candidate and r["baseline"] is None
        },
        "deltas": {
            f"{r['metric']}_vs_{r['baseline']}": {
                "delta": r["delta"],
                "ci": [r["ci_low"], r["ci_high"]],
                "p_value": r["p_value"],
            }
            for r in rows
            if r["baseline"] is not None
        },
        "queries": {"human": n_queries, "engagement": result.settings["engagement_queries"]},
    }
    return {
        "blessed": not failed,
        "reasons": failed or [g["reason"] for g in gates.values()],
        "gates": gates,
        "evidence": evidence,
    }


def teacher_audit_gate(audit: Mapping) -> dict:
    """The gate of a teacher quality audit (:mod:`unisup.teachers.audit`): every teacher stage and the
    cascade at or above the features-only baseline the audit computed."""
    gate = audit.get("gate")
    if gate is None:
        return _gate(False, None, None, "the teacher audit has no features-only baseline gate: re-run the audit")
    base = audit.get("features_baseline", {})
    cascade = audit["cascade"]
    ndcg = "condensed_ndcg@10"
    summary = (
        f"teacher audit on {audit.get('pairs')} {audit.get('split')} pairs: cascade QWK "
        f"{_or_nan(cascade.get('qwk')):.3f}, condensed nDCG@10 {_or_nan(cascade.get(ndcg)):.3f} against the "
        f"features-only baseline's {_or_nan(base.get('qwk')):.3f} / {_or_nan(base.get(ndcg)):.3f}"
    )
    if gate["passed"]:
        return _gate(True, None, gate["tolerance"], summary + ": every stage at or above it")
    return _gate(
        False,
        gate["failures"],
        gate["tolerance"],
        "teachers below the features-only baseline: " + "; ".join(gate["failures"]),
    )


def blessing_of(result: EvaluationResult, cfg: EvaluationConfig) -> dict:
    """The blessing the gates of ``cfg`` give ``result``: :func:`bless` over its systems (the
    first is the candidate), with the teacher audit's gate when the results hold an audit."""
    candidate, *baselines = result.systems
    blessing = bless(result, candidate, baselines, cfg, result.settings["engagement_queries"] > 0)
    audit = result.settings.get("teacher_audit")
    return blessing if audit is None else with_gate(blessing, "teacher_audit", teacher_audit_gate(audit))


def with_gate(blessing: dict, name: str, gate: dict) -> dict:
    """The blessing with one more gate: blessed only if it passes too; reasons as :func:`bless` gives them."""
    gates = {**blessing["gates"], name: gate}
    failed = [g["reason"] for g in gates.values() if not g["passed"]]
    return {
        **blessing,
        "gates": gates,
        "blessed": not failed,
        "reasons": failed or [g["reason"] for g in gates.values()],
    }


# ---------------------------------------------------------------- outputs


HEADLINE_METRICS = ("ndcg", "condensed_ndcg", "judged", "grade0_share", "recall", "engagement_recall")


def kfp_metrics(result: EvaluationResult) -> dict[str, float]:
    """The headline scalars for a KFP Metrics artifact (the rest is in the report and the
    results): the candidate's headline metrics at the first cutoff over all queries, their
    deltas against each baseline, and the blessing."""
    k = result.settings["evaluation"]["cutoffs"][0]
    wanted = {f"{name}@{k}" for name in HEADLINE_METRICS}
    out = {}
    for row in result.table.to_pylist():
        if row["slice"] != "all" or row["system"] != next(iter(result.systems)) or row["metric"] not in wanted:
            continue
        key = row["metric"] if row["baseline"] is None else f"{row['metric']}_delta_vs_{row['baseline']}"
        value = row["value"] if row["baseline"] is None else row["delta"]
        if value is not None and not math.isnan(value):
            out[key] = round(float(value), 6)
    out["blessed"] = float(result.blessing["blessed"])
    return out


def results_json(result: EvaluationResult) -> dict:
    """The results as one JSON document: rows, blessing, grade distributions, settings, per-query values."""
    return {
        "systems": result.systems,
        "results": result.table.to_pylist(),
        "blessing": result.blessing,
        "grade_distributions": result.grade_distributions,
        "slices": result.slices,
        "settings": result.settings,
        "per_query": result.per_query,
    }


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def output_uris(out_uri: str) -> dict[str, str]:
    """Where :func:`write_outputs` puts each output under one folder."""
    files = {"results": RESULTS_FILE, "json": JSON_FILE, "report": REPORT_FILE, "blessing": BLESSING_FILE}
    return {kind: storage.join(out_uri, name) for kind, name in files.items()}


def read_results(uri: str) -> EvaluationResult:
    """The :class:`EvaluationResult` in a results JSON that :func:`write_outputs` wrote."""
    try:
        payload = json.loads(storage.read_text(uri))
        rows = [{**row, "value": math.nan if row["value"] is None else row["value"]} for row in payload["results"]]
        return EvaluationResult(
            table=pa.Table.from_pylist(rows, schema=EVAL_RESULTS.arrow_schema()),
            per_query=payload["per_query"],
            grade_distributions=payload["grade_distributions"],
            slices=payload["slices"],
            blessing=payload["blessing"],
            systems=payload["systems"],
            settings=payload["settings"],
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{uri}: not the results JSON of unisup evaluate ({type(err).__name__}: {err})") from None


def bound_blessing(result: EvaluationResult, results_uri: str) -> dict:
    """The blessing with the content digests of what was evaluated: the results JSON at
    ``results_uri`` and, when :func:`run_evaluation` recorded them, the candidate's model and index."""
    evaluated = {"results": {"uri": results_uri, "digest": storage.content_digest(results_uri)}}
    for artifact in ("model", "index"):
        if f"candidate_{artifact}_digest" in result.settings:
            evaluated[artifact] = {
                "uri": result.settings[f"candidate_{artifact}"],
                "digest": result.settings[f"candidate_{artifact}_digest"],
            }
    return {**result.blessing, "evaluated": evaluated}


def write_outputs(result: EvaluationResult, uris: Mapping[str, str]) -> None:
    """Write the EVAL_RESULTS table (Parquet), the results JSON, the HTML report and, last,
    the blessing JSON bound to them (:func:`bound_blessing`) to ``uris["results"|"json"|"report"|"blessing"]``."""
    from unisup.data.tables import write_table
    from unisup.report import render_report

    write_table(result.table, uris["results"])
    storage.write_text(uris["json"], json.dumps(_nan_to_none(results_json(result)), indent=1))
    storage.write_text(uris["report"], render_report(result))
    storage.write_text(uris["blessing"], json.dumps(_nan_to_none(bound_blessing(result, uris["json"])), indent=1))


def checked_model_digests(indexes: Sequence[tuple[str, str]], catalog: dict) -> dict[str, str]:
    """The content digest of each model of the (model, index) pairs, once each index is checked to
    be built by its model on the ``catalog`` (:class:`ArtifactMismatch` otherwise)."""
    from unisup.index import check_index_matches

    model_digests: dict[str, str] = {}
    for model, index in indexes:
        model_digests.setdefault(model, storage.content_digest(model))
        check_index_matches(index, model, model_digests[model], catalog)
    return model_digests


def held_out_engagement(engagement_uri: str | None, max_queries: int) -> EngagementTargets | None:
    """The targets of a held-out engagement table; None without one, or when it holds no click."""
    if not engagement_uri:
        return None
    from unisup.data.tables import read_artifact

    targets = engagement_targets(read_artifact(engagement_uri, "engagement").accepted, max_queries)
    return targets if targets.clicked else None  # an empty hold-out judges nothing


def baseline_systems(dataset, cfg: Config, model_baselines: Sequence[tuple[str, str, str]]) -> list[RankingSystem]:
    """The ``(name, model, index)`` bi-encoder baselines, then the channels of ``evaluation.baseline_channels``."""
    baselines = [biencoder_system(name, model, index) for name, model, index in model_baselines]
    if cfg.evaluation.baseline_channels:
        channels = _channels(dataset, cfg, cfg.evaluation.baseline_channels)
        baselines += [channel_system(name, channels[name]) for name in cfg.evaluation.baseline_channels]
    return baselines


def run_evaluation(
    cfg: Config,
    candidate_model: str,
    candidate_index: str,
    out_uri: str | None = None,
    model_baselines: Sequence[tuple[str, str, str]] = (),
    judgments_uri: str | None = None,
    split: str | None = None,
    engagement_uri: str | None = None,
    teacher_audit_uri: str | None = None,
    provenance: Mapping | None = None,
) -> EvaluationResult:
    """Evaluate a bi-encoder + index on the judged ``split`` (``evaluation.split``) of
    ``judgments_uri`` (``data.judgments_uri``) and on held-out engagement, against the
    ``(name, model, index)`` baselines and the channels of ``evaluation.baseline_channels``;
    with ``teacher_audit_uri`` the teachers' audit gates the blessing too (teachers below the
    features-only baseline are named). Every index must have been built by its model on the
    configured catalog (:class:`ArtifactMismatch` otherwise, before any ranking). The settings
    record the inputs, the fusion preset, the code version, the time (UTC) and ``provenance``
    (config, overrides, run id: what the caller knows). Writes every output under ``out_uri`` when given."""
    from dataclasses import replace

    from unisup.data.dataset import load_dataset
    from unisup.index import catalog_record

    data_cfg = replace(cfg.data, judgments_uri=judgments_uri) if judgments_uri else cfg.data
    dataset = load_dataset(data_cfg)
    split = split or cfg.evaluation.split
    qrels = dataset.qrels(split)
    if not qrels:
        raise InputError(f"{data_cfg.judgments_uri}: no judged queries in the {split!r} split of {data_cfg.split_uri}")
    catalog = catalog_record(data_cfg.catalog_uri, dataset.catalog.num_rows)
    indexes = [(candidate_model, candidate_index), *((model, index) for _, model, index in model_baselines)]
    model_digests = checked_model_digests(indexes, catalog)
    audit = json.loads(storage.read_text(teacher_audit_uri)) if teacher_audit_uri else None
    engagement = held_out_engagement(engagement_uri, cfg.evaluation.max_engagement_queries)
    names = [name for name, _, _ in model_baselines] + list(cfg.evaluation.baseline_channels)
    check_gate_settings(cfg.evaluation, metrics_to_measure(cfg.evaluation, engagement is not None), names)
    baselines = baseline_systems(dataset, cfg, model_baselines)
    result = evaluate(
        biencoder_system(CANDIDATE, candidate_model, candidate_index),
        baselines,
        qrels,
        cfg.evaluation,
        cfg.data.relevance_threshold,
        cfg.data.num_grades,
        engagement,
    )
    result.settings.update(
        {
            "judgments_uri": data_cfg.judgments_uri,
            "split": split,
            "engagement_uri": engagement_uri,
            "catalog": catalog,
            "candidate_model": candidate_model,
            "candidate_model_digest": model_digests[candidate_model],
            "candidate_index": candidate_index,
            "candidate_index_digest": storage.content_digest(candidate_index),
            "model_baselines": [list(b) for b in model_baselines],
            "teacher_audit_uri": teacher_audit_uri,
            "preset": cfg.fusion.preset,
            "code_version": code_version(),
            "evaluated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            **dict(provenance or {}),
        }
    )
    if audit is not None:
        result.settings["teacher_audit"] = {key: audit.get(key) for key in AUDIT_KEYS}
        result.blessing = blessing_of(result, cfg.evaluation)
    if out_uri:
        write_outputs(result, output_uris(out_uri))
    return result


def _channels(dataset, cfg: Config, names: Sequence[str]) -> dict:
    from unisup.channels import BM25Channel, DenseChannel, FusedChannel
    from unisup.data.catalog import item_texts
    from unisup.encoders import DenseEncoder

    known = ("bm25", "minilm", "rrf")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"evaluation.baseline_channels: unknown {unknown}; known: {', '.join(known)}")
    ids = dataset.catalog["product_id"].to_pylist()
    texts = item_texts(dataset.catalog)
    ch = cfg.channels
    out: dict = {"bm25": BM25Channel(ids, texts, k1=ch.bm25_k1, b=ch.bm25_b)}
    if "minilm" in names or "rrf" in names:
        encoder = DenseEncoder(ch.dense_model or None, max_length=ch.dense_max_length, batch_size=ch.dense_batch_size)
        out["minilm"] = DenseChannel(ids, texts, encoder, cache_dir=ch.cache_dir)
        out["rrf"] = FusedChannel([out["bm25"], out["minilm"]], k=ch.rrf_k)
    return out
