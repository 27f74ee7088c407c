"""The evaluation report: one self-contained HTML page (figures as base64 PNG, inline CSS).

Figures: metric bars with bootstrap CIs per system, sorted per-query deltas of the gate
metric against each baseline, and the grade distribution of every system's top k.
The Kubeflow UI shows the page as an HTML artifact.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unisup.evaluation import EvaluationResult

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
img{max-width:100%}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else html.escape(str(x))


def _main_metrics(result: EvaluationResult) -> list[str]:
    k = result.settings["evaluation"]["cutoffs"][0]
    wanted = [f"ndcg@{c}" for c in result.settings["evaluation"]["cutoffs"][:2]]
    wanted += [
        f"{name}@{k}"
        for name in ("recall", "avg_grade", "grade0_share", "judged", "condensed_ndcg", "engagement_recall")
    ]
    measured = set(next(iter(result.per_query.values())))
    return [m for m in wanted if m in measured]


def metric_bars(result: EvaluationResult):
    """One panel per main metric: each system's mean with its bootstrap CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _main_metrics(result)
    systems = list(result.systems)
    rows = {
        (r["system"], r["metric"]): r for r in result.table.to_pylist() if r["baseline"] is None and r["slice"] == "all"
    }
    cols = min(4, len(metrics))
    n_rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.6 * n_rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values, low, high = [], [], []
        for s in systems:
            row = rows[(s, metric)]
            values.append(row["value"])
            low.append(row["value"] - (row["ci_low"] if row["ci_low"] is not None else row["value"]))
            high.append((row["ci_high"] if row["ci_high"] is not None else row["value"]) - row["value"])
        ax.bar(
            range(len(systems)),
            values,
            yerr=[low, high],
            capsize=4,
            color=[colors[i % len(colors)] for i in range(len(systems))],
        )
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def per_query_deltas(result: EvaluationResult):
    """Sorted per-query deltas of the gate metric, candidate minus each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.settings["evaluation"]["gate_metric"]
    candidate, *baselines = list(result.systems)
    fig, axes = plt.subplots(1, max(1, len(baselines)), figsize=(4.5 * max(1, len(baselines)), 3), squeeze=False)
    for ax, base in zip(axes.flat, baselines, strict=False):
        cand, other = result.per_query[candidate][metric], result.per_query[base][metric]
        deltas = sorted(cand[q] - other[q] for q in cand if not (math.isnan(cand[q]) or math.isnan(other[q])))
        ax.bar(range(len(deltas)), deltas, color=["#1a7f37" if d > 0 else "#cf222e" for d in deltas], width=1.0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{metric}: {candidate} − {base}", fontsize=10)
        ax.set_xlabel("queries, sorted by delta")
    fig.tight_layout()
    return fig


def grade_bars(result: EvaluationResult):
    """Stacked shares of each grade (and unjudged) in every system's top k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(result.systems)
    labels = list(next(iter(result.grade_distributions.values())))
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(systems) + 1.2))
    left = [0.0] * len(systems)
    cmap = plt.get_cmap("RdYlGn")
    for i, label in enumerate(labels):
        shares = [result.grade_distributions[s][label] for s in systems]
        color = "#bbbbbb" if label == "unjudged" else cmap(i / max(1, len(labels) - 2))
        ax.barh(systems, shares, left=left, color=color, label=f"grade {label}" if label != "unjudged" else label)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the top {result.settings['evaluation']['cutoffs'][0]}")
    ax.legend(ncol=len(labels), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    return fig


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(result: EvaluationResult) -> str:
    """The whole report as an HTML string with no external references."""
    blessing = result.blessing
    verdict = '<span class="pass">BLESSED</span>' if blessing["blessed"] else '<span class="fail">NOT BLESSED</span>'
    gates = _table(
        ["gate", "passed", "observed", "threshold", "reason"],
        [
            [name, "yes" if g["passed"] else "NO", g["observed"], g["threshold"], g["reason"]]
            for name, g in blessing["gates"].items()
        ],
    )
    rows = result.table.to_pylist()
    comparisons = _table(
        ["metric", "slice", "baseline", "candidate", "delta", "CI low", "CI high", "p", "queries"],
        [
            [
                r["metric"],
                r["slice"],
                r["baseline"],
                r["value"],
                r["delta"],
                r["ci_low"],
                r["ci_high"],
                r["p_value"],
                r["n_queries"],
            ]
            for r in rows
            if r["baseline"] is not None and r["metric"] in _main_metrics(result)
        ],
    )
    values = _table(
        ["system", "metric", "slice", "judged by", "value", "CI low", "CI high", "queries"],
        [
            [
                r["system"],
                r["metric"],
                r["slice"],
                r["judged_by"],
                r["value"],
                r["ci_low"],
                r["ci_high"],
                r["n_queries"],
            ]
            for r in rows
            if r["baseline"] is None
        ],
    )
    s, ev = result.settings, result.settings["evaluation"]
    systems = ", ".join(f"{html.escape(n)} ({html.escape(kind)})" for n, kind in result.systems.items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>unisup offline evaluation</title><style>{STYLE}</style></head><body>
<h1>Offline evaluation: {verdict}</h1>
<p>Systems: {systems}. {s["human_queries"]} judged queries (split {html.escape(str(s.get("split", "")))}),
{s["engagement_queries"]} held-out engagement queries. Paired bootstrap: {ev["n_bootstrap"]} resamples,
{ev["confidence"]:.0%} percentile intervals; head = the {ev["head_fraction"]:.0%} most frequent queries.</p>
<h2>Blessing gates</h2>{gates}
<h2>Metrics with confidence intervals</h2>{_png(metric_bars(result))}
<h2>Per-query deltas of {html.escape(ev["gate_metric"])}</h2>{_png(per_query_deltas(result))}
<h2>Grade distribution of the top {ev["cutoffs"][0]}</h2>{_png(grade_bars(result))}
<h2>Candidate against baselines</h2>{comparisons}
<h2>All values</h2>{values}
</body></html>
"""
