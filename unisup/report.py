"""The evaluation report: one self-contained HTML page (figures as base64 PNG, inline CSS, no
network reference), readable at 1400 and at 800 px.

From the top: a headline sentence (who won on the gate metric, by how much, with the CI, and
which gates failed), the inputs (data, models, indexes, run, config, preset, code version),
the gates with each delta and its CI, a forest plot of the paired deltas with the gate lines,
metric against cutoff, each main metric with its CI, sorted per-query deltas with win/tie/loss
counts, the grade distribution of every top k, and, folded, every value with systems as columns.
Systems appear in one order everywhere (the candidate first), the candidate named by its fusion
preset as the demo's terminal names it. The Kubeflow UI shows the page as an HTML artifact.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re

from unisup.evaluation_result import EvaluationResult

LOWER_IS_BETTER = ("grade0_share",)  # metric families where a negative delta is the better one
TIE = 1e-9  # per-query deltas within this of zero are ties
CUTOFF_FAMILIES = ("ndcg", "condensed_ndcg", "recall", "judged", "engagement_recall", "conversion_recall")
DPI = 150  # PNG pixels per inch; pages show figures at PX_PER_INCH CSS pixels per inch
PX_PER_INCH = 100

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1320px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.3em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.headline{font-size:1.1em;background:#f6f8fa;border-left:4px solid #888;padding:0.6em 0.9em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.88em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top;white-space:nowrap}
th{background:#f3f3f3;text-align:left} td:first-child{text-align:left} td.name{text-align:left}
td.text{text-align:left;min-width:18em;white-space:normal}
td.uri{text-align:left;word-break:break-all;white-space:normal;font-family:monospace}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:0.8em 1.2em;align-items:flex-start}
figure{margin:0} img{max-width:100%;height:auto;display:block}
.key span{display:inline-block;margin-right:1.2em;white-space:nowrap}
.key i{display:inline-block;width:0.9em;height:0.9em;margin-right:0.3em;vertical-align:-0.1em;border-radius:2px}
details summary{cursor:pointer;font-weight:bold;margin:0.6em 0}
@media (max-width:900px){body{padding:0 0.6em} table{font-size:0.8em}}
"""


# ---------------------------------------------------------------- names, order, values


def display_names(result: EvaluationResult) -> dict[str, str]:
    """System name -> name shown, in the systems' order: the candidate by its fusion preset
    (``settings["preset"]``, the name the terminal gives it) unless a baseline has that name."""
    candidate = next(iter(result.systems))
    preset = result.settings.get("preset")
    shown = preset if preset and preset not in result.systems else candidate
    return {s: shown if s == candidate else s for s in result.systems}


def _colors(result: EvaluationResult) -> dict[str, str]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return {s: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, s in enumerate(result.systems)}


def _rows(result: EvaluationResult) -> dict[tuple, dict]:
    return {(r["system"], r["baseline"], r["metric"], r["slice"]): r for r in result.table.to_pylist()}


def _measured(result: EvaluationResult) -> set[str]:
    return set(next(iter(result.per_query.values())))


def _defined(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _family(metric: str) -> str:
    return metric.split("@", 1)[0]


def _main_metrics(result: EvaluationResult) -> list[str]:
    ev = result.settings["evaluation"]
    k = ev["cutoffs"][0]
    wanted = [ev["gate_metric"]] + [f"ndcg@{c}" for c in ev["cutoffs"]]
    wanted += [
        f"{name}@{k}"
        for name in (
            "condensed_ndcg",
            "recall",
            "judged",
            "avg_grade",
            "grade0_share",
            "engagement_recall",
            "conversion_recall",
        )
    ]
    measured = _measured(result)
    return [m for m in dict.fromkeys(wanted) if m in measured]


def _gated_baselines(result: EvaluationResult) -> list[str]:
    _, *baselines = result.systems
    return list(result.blessing.get("evidence", {}).get("gated_baselines") or baselines)


def _delta_phrase(row: dict, metric: str) -> tuple[str, str]:
    """("beats"|"loses to"|"is not separated from", css class) from the delta's CI."""
    low, high = row["ci_low"], row["ci_high"]
    if not (_defined(low) and _defined(high)):
        return "is not separated from", ""
    sign = -1 if _family(metric) in LOWER_IS_BETTER else 1
    if sign * low > 0 and sign * high > 0:
        return "beats", "pass"
    if sign * low < 0 and sign * high < 0:
        return "loses to", "fail"
    return "is not separated from", ""


def _num(x, signed: bool = False, digits: int = 4) -> str:
    if not _defined(x):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(row: dict) -> str:
    return f"[{_num(row['ci_low'], True)}, {_num(row['ci_high'], True)}]"


def headline(result: EvaluationResult) -> str:
    """The sentences at the top (HTML): the candidate against the first gated baseline on the
    gate metric (delta, CI, p, queries), the other baselines in short, and the blessing with the
    gates that failed."""
    ev = result.settings["evaluation"]
    metric, conf = ev["gate_metric"], f"{ev['confidence']:.0%}"
    names = display_names(result)
    candidate, *baselines = result.systems
    rows = _rows(result)
    e = html.escape
    parts = []
    if baselines:
        base = _gated_baselines(result)[0]
        row = rows[(candidate, base, metric, "all")]
        verb, css = _delta_phrase(row, metric)
        p_value = _num(row["p_value"], digits=3)
        parts.append(
            f'<b>{e(names[candidate])}</b> <span class="{css}">{verb}</span> <b>{e(names[base])}</b> on '
            f"{e(metric)}: delta {_num(row['delta'], True)} ({conf} CI {_ci(row)}, p = {p_value}, "
            f"{row['n_queries']} judged queries)."
        )
        others = []
        for b in baselines:
            if b != base:
                other = rows[(candidate, b, metric, "all")]
                others.append(
                    f"{_delta_phrase(other, metric)[0]} {e(names[b])} ({_num(other['delta'], True)}, CI {_ci(other)})"
                )
        if others:
            parts.append(f"On the same metric it {', '.join(others)}.")
    else:
        row = rows[(candidate, None, metric, "all")]
        parts.append(
            f"<b>{e(names[candidate])}</b>: {e(metric)} {_num(row['value'])} ({conf} CI "
            f"[{_num(row['ci_low'])}, {_num(row['ci_high'])}]); no baseline to compare with."
        )
    gates = result.blessing.get("gates", {})
    failed = [(n, g) for n, g in gates.items() if not g["passed"]]
    if failed:
        listed = "; ".join(f"<code>{e(n)}</code>: {e(g['reason'])}" for n, g in failed)
        parts.append(
            f'<span class="fail">Not blessed</span>: {len(failed)} of {len(gates)} '
            f"gate{'s' if len(gates) != 1 else ''} failed ({listed})."
        )
    else:
        parts.append(f'<span class="pass">Blessed</span>: all {len(gates)} gates passed.')
    return " ".join(parts)


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, alt: str) -> str:
    """The figure as an <img> shown at PX_PER_INCH CSS pixels per inch (so it is not shrunk below
    that while the page is wider), drawn at DPI for sharpness."""
    plt = _plt()
    width = fig.get_figwidth() * PX_PER_INCH
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return (
        f'<figure><img alt="{html.escape(alt)}" style="width:{width:.0f}px" '
        f'src="data:image/png;base64,{data}"></figure>'
    )


def _gate_lines(result: EvaluationResult, metric: str, base: str) -> float | None:
    """The delta a gate compares against for ``metric`` vs ``base`` (None when not gated): the
    gate metric's CI low end must reach it, grade-0 share must not exceed it, engagement recall
    (a relative drop) must not fall below it, converted to an absolute delta."""
    if base not in _gated_baselines(result):
        return None
    ev = result.settings["evaluation"]
    k = ev["cutoffs"][0]
    rows = _rows(result)
    if metric == ev["gate_metric"]:
        return ev["gate_min_delta_ci_low"]
    if metric == f"grade0_share@{k}":
        return ev["gate_max_grade0_increase"]
    if metric == f"engagement_recall@{k}" and (base, None, metric, "all") in rows:
        return -ev["gate_max_engagement_drop"] * rows[(base, None, metric, "all")]["value"]
    return None


def forest_metrics(result: EvaluationResult) -> list[str]:
    """The metrics of the forest plot: the gated ones first, then the other main ones at the first cutoff."""
    ev = result.settings["evaluation"]
    k = ev["cutoffs"][0]
    wanted = [ev["gate_metric"], f"grade0_share@{k}", f"engagement_recall@{k}"]
    wanted += [f"condensed_ndcg@{k}", f"recall@{k}"] + [f"ndcg@{c}" for c in ev["cutoffs"]]
    measured = _measured(result)
    return [m for m in dict.fromkeys(wanted) if m in measured]


def forest_plot(result: EvaluationResult):
    """Paired delta (candidate minus each baseline) with its CI, one row per metric and baseline,
    and a red dashed line where a gate puts its threshold (written at the edge when it lies beyond
    the deltas). Green: the CI favours the candidate; red: it favours the baseline; grey: it spans zero."""
    plt = _plt()
    candidate, *baselines = result.systems
    names = display_names(result)
    rows = _rows(result)
    conf = result.settings["evaluation"]["confidence"]
    entries = [
        (metric, base, rows[(candidate, base, metric, "all")])
        for metric in forest_metrics(result)
        for base in baselines
        if (candidate, base, metric, "all") in rows
    ]
    fig, ax = plt.subplots(figsize=(7.5, 0.34 * len(entries) + 1.3))
    # the axis spans the deltas, their CIs and zero; a gate beyond that is written at the edge
    spans = [0.0] + [x for _, _, r in entries for x in (r["delta"], r["ci_low"], r["ci_high"]) if _defined(x)]
    pad = max(0.01, 0.08 * (max(spans) - min(spans)))
    lo, hi = min(spans) - pad, max(spans) + pad
    labelled = False
    for y, (metric, base, row) in enumerate(entries):
        verb, _ = _delta_phrase(row, metric)
        color = {"beats": "#1a7f37", "loses to": "#cf222e"}.get(verb, "#6e7781")
        if _defined(row["ci_low"]) and _defined(row["ci_high"]):
            ax.plot([row["ci_low"], row["ci_high"]], [y, y], color=color, linewidth=2)
        ax.plot([row["delta"]], [y], "o", color=color, markersize=5)
        gate = _gate_lines(result, metric, base)
        if gate is not None and lo <= gate <= hi:
            ax.plot(
                [gate, gate],
                [y - 0.42, y + 0.42],
                "--",
                color="#cf222e",
                linewidth=1.4,
                zorder=3,
                label=None if labelled else "gate threshold",
            )
            labelled = True
        elif gate is not None:
            left = gate < lo
            ax.annotate(
                f"{'◂ ' if left else ''}gate {gate:+.3g}{'' if left else ' ▸'}",
                (lo if left else hi, y),
                xytext=(3 if left else -3, 0),
                textcoords="offset points",
                ha="left" if left else "right",
                va="center",
                fontsize=7,
                color="#cf222e",
            )
        if y and entries[y - 1][0] != metric:
            ax.axhline(y - 0.5, color="#dddddd", linewidth=0.8)
    ax.set_xlim(lo, hi)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(entries)), [f"{m} vs {names[b]}" for m, b, _ in entries], fontsize=9)
    ax.set_ylim(len(entries) - 0.5, -0.5)
    ax.set_xlabel(f"delta, {names[candidate]} minus baseline ({conf:.0%} paired bootstrap CI)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#eeeeee")
    if labelled:
        ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def cutoff_families(result: EvaluationResult) -> list[str]:
    """Metric families measured at every cutoff (there must be more than one cutoff)."""
    cutoffs = result.settings["evaluation"]["cutoffs"]
    measured = _measured(result)
    if len(cutoffs) < 2:
        return []
    return [f for f in CUTOFF_FAMILIES if all(f"{f}@{c}" in measured for c in cutoffs)]


def metric_vs_cutoff(result: EvaluationResult, family: str):
    """One metric family at every cutoff (@10/25/100...): each system's mean with its CI."""
    plt = _plt()
    cutoffs = result.settings["evaluation"]["cutoffs"]
    names, colors, rows = display_names(result), _colors(result), _rows(result)
    systems = list(result.systems)
    fig, ax = plt.subplots(figsize=(3.7, 3.0))
    width = 0.5 / max(1, len(systems))
    for i, s in enumerate(systems):
        x = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(cutoffs))]
        got = [rows[(s, None, f"{family}@{c}", "all")] for c in cutoffs]
        values = [r["value"] for r in got]
        err = [
            [r["value"] - r["ci_low"] if _defined(r["ci_low"]) else 0 for r in got],
            [r["ci_high"] - r["value"] if _defined(r["ci_high"]) else 0 for r in got],
        ]
        ax.errorbar(x, values, yerr=err, marker="o", markersize=4, capsize=3, color=colors[s], label=names[s])
    ax.set_xticks(range(len(cutoffs)), [f"@{c}" for c in cutoffs])
    ax.set_xlabel("cutoff k", fontsize=9)
    ax.set_title(f"{family}@k", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#eeeeee")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def metric_bar(result: EvaluationResult, metric: str):
    """One metric: each system's mean with its bootstrap CI."""
    plt = _plt()
    names, colors, rows = display_names(result), _colors(result), _rows(result)
    systems = list(result.systems)
    fig, ax = plt.subplots(figsize=(3.4, 2.8))
    got = [rows[(s, None, metric, "all")] for s in systems]
    err = [
        [r["value"] - r["ci_low"] if _defined(r["ci_low"]) else 0 for r in got],
        [r["ci_high"] - r["value"] if _defined(r["ci_high"]) else 0 for r in got],
    ]
    ax.bar(range(len(systems)), [r["value"] for r in got], yerr=err, capsize=4, color=[colors[s] for s in systems])
    ax.set_xticks(range(len(systems)), [names[s] for s in systems], rotation=25, ha="right", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(metric, fontsize=10)
    fig.tight_layout()
    return fig


def win_tie_loss(result: EvaluationResult, baseline: str, metric: str | None = None) -> tuple[list[float], dict]:
    """Sorted per-query deltas (candidate minus ``baseline``) of ``metric`` (the gate metric) over
    queries where both are defined, and {"wins", "ties", "losses"} counted in the candidate's favour."""
    metric = metric or result.settings["evaluation"]["gate_metric"]
    candidate = next(iter(result.systems))
    cand, other = result.per_query[candidate][metric], result.per_query[baseline][metric]
    deltas = sorted(cand[q] - other[q] for q in cand if _defined(cand[q]) and _defined(other.get(q)))
    sign = -1 if _family(metric) in LOWER_IS_BETTER else 1
    counts = {
        "wins": sum(sign * d > TIE for d in deltas),
        "ties": sum(abs(d) <= TIE for d in deltas),
        "losses": sum(sign * d < -TIE for d in deltas),
    }
    return deltas, counts


def per_query_deltas(result: EvaluationResult, baseline: str):
    """Sorted per-query deltas of the gate metric against one baseline, with win/tie/loss counts."""
    plt = _plt()
    metric = result.settings["evaluation"]["gate_metric"]
    names = display_names(result)
    candidate = next(iter(result.systems))
    deltas, counts = win_tie_loss(result, baseline)
    fig, ax = plt.subplots(figsize=(3.7, 2.9))
    colors = ["#1a7f37" if d > TIE else "#cf222e" if d < -TIE else "#8c959f" for d in deltas]
    ax.bar(range(len(deltas)), deltas, color=colors, width=1.0)
    ties = [i for i, d in enumerate(deltas) if abs(d) <= TIE]
    if ties:
        ax.plot([ties[0], ties[-1]], [0, 0], color="#8c959f", linewidth=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title(
        f"{metric}: {names[candidate]} − {names[baseline]}\n"
        f"wins {counts['wins']} · ties {counts['ties']} · losses {counts['losses']} of {len(deltas)} queries",
        fontsize=9,
    )
    ax.set_xlabel("queries, sorted by delta", fontsize=8)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


def grade_bars(result: EvaluationResult):
    """Stacked shares of each grade (and unjudged) in every system's top k, systems top to bottom."""
    plt = _plt()
    names = display_names(result)
    systems = list(result.systems)
    labels = list(next(iter(result.grade_distributions.values())))
    fig, ax = plt.subplots(figsize=(6.8, 0.45 * len(systems) + 1.5))
    left = [0.0] * len(systems)
    cmap = plt.get_cmap("RdYlGn")
    for i, label in enumerate(labels):
        shares = [result.grade_distributions[s][label] or 0.0 for s in systems]
        color = "#bbbbbb" if label == "unjudged" else cmap(i / max(1, len(labels) - 2))
        ax.barh(
            [names[s] for s in systems],
            shares,
            left=left,
            color=color,
            label=f"grade {label}" if label != "unjudged" else label,
        )
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the top {result.settings['evaluation']['cutoffs'][0]}", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(ncol=len(labels), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- tables


def _cell(x, css: str = "") -> str:
    if isinstance(x, float):
        x = _num(x)
    text = "–" if x is None else html.escape(str(x))
    return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"


def _table(headers: list[str], rows: list[list], css: list[str] | None = None) -> str:
    css = css or [""] * len(headers)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c, k) for c, k in zip(r, css, strict=True)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def inputs(result: EvaluationResult) -> list[tuple[str, str]]:
    """(what, value) of everything the evaluation read and ran as: data, models and indexes
    with digests, run, config, preset, code version."""
    s = result.settings
    names = display_names(result)
    candidate = next(iter(result.systems))
    catalog = s.get("catalog") or {}
    out = [
        ("run id", s.get("run_id") or "–"),
        ("evaluated at", s.get("evaluated_at", "–")),
        ("config", s.get("config", "–")),
        ("fusion preset of the candidate", s.get("preset", "–")),
        ("code version", s.get("code_version", "–")),
        ("catalog", f"{catalog.get('uri', '–')} ({catalog.get('items', '?')} items, {catalog.get('digest', '')})"),
        ("judgments", f"{s.get('judgments_uri', '–')} (split {s.get('split', '–')})"),
        ("held-out engagement", s.get("engagement_uri") or "none"),
        ("teacher audit", s.get("teacher_audit_uri") or "none"),
        (f"{names[candidate]} model", f"{s.get('candidate_model', '–')} ({s.get('candidate_model_digest', '')})"),
        (f"{names[candidate]} index", f"{s.get('candidate_index', '–')} ({s.get('candidate_index_digest', '')})"),
    ]
    for name, model, index in s.get("model_baselines", []):
        out += [(f"{name} model", model), (f"{name} index", index)]
    for name, kind in result.systems.items():
        if kind == "channel":
            out.append((f"{name}", "retrieval channel over the catalog"))
    if s.get("overrides"):
        out.append(("overrides", " ".join(s["overrides"])))
    return out


def gate_rows(result: EvaluationResult) -> list[list]:
    """One row per gate: name, passed, delta of its metric with the CI, the figure it compares,
    the threshold and the reason."""
    candidate = next(iter(result.systems))
    rows = _rows(result)
    out = []
    for name, g in result.blessing.get("gates", {}).items():
        delta, ci = None, None
        match = re.fullmatch(r"(.+?)(?:_delta_ci_low)?_vs_(.+)", name)
        if match and (candidate, match[2], match[1], "all") in rows:
            row = rows[(candidate, match[2], match[1], "all")]
            delta, ci = _num(row["delta"], True), _ci(row)
        observed = g["observed"]
        if isinstance(observed, list):
            observed = "; ".join(map(str, observed))
        out.append(["yes" if g["passed"] else "NO", name, delta, ci, observed, g["threshold"], g["reason"]])
    return out


def _comparisons(result: EvaluationResult) -> str:
    """Main metrics (rows) against each baseline (columns): delta, CI and p."""
    candidate, *baselines = result.systems
    names, rows = display_names(result), _rows(result)
    body = []
    for metric in _main_metrics(result):
        line = [metric]
        for b in baselines:
            r = rows.get((candidate, b, metric, "all"))
            line.append(f"{_num(r['delta'], True)} {_ci(r)} p={_num(r['p_value'], digits=3)}" if r else None)
        body.append(line)
    return _table(["metric"] + [f"vs {names[b]}" for b in baselines], body)


def values_pivot(result: EvaluationResult) -> tuple[list[str], list[list]]:
    """Every system's own values: one row per (metric, slice), one column per system (value [CI])."""
    names, rows = display_names(result), _rows(result)
    systems = list(result.systems)
    keys = list(dict.fromkeys((r["metric"], r["slice"], r["judged_by"]) for r in result.table.to_pylist()))
    body = []
    for metric, slice_name, judged_by in keys:
        cells = []
        for s in systems:
            r = rows.get((s, None, metric, slice_name))
            cells.append(f"{_num(r['value'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r else None)
        n = rows.get((systems[0], None, metric, slice_name), {}).get("n_queries")
        body.append([metric, slice_name, judged_by, n, *cells])
    return ["metric", "slice", "judged by", "queries", *(names[s] for s in systems)], body


# ---------------------------------------------------------------- page


def render_report(result: EvaluationResult) -> str:
    """The whole report as an HTML string with no external references."""
    e = html.escape
    s, ev = result.settings, result.settings["evaluation"]
    names, colors = display_names(result), _colors(result)
    candidate, *baselines = result.systems
    blessed = result.blessing.get("blessed")
    verdict = '<span class="pass">BLESSED</span>' if blessed else '<span class="fail">NOT BLESSED</span>'
    key = "".join(
        f'<span><i style="background:{colors[n]}"></i>{e(names[n])} ({e(kind)})</span>'
        for n, kind in result.systems.items()
    )
    inputs_table = _table(["input", "value"], [list(r) for r in inputs(result)], ["", "uri"])
    gates = _table(
        ["passed", "gate", "delta", f"{ev['confidence']:.0%} CI", "observed", "threshold", "reason"],
        gate_rows(result),
        ["", "name", "", "", "", "", "text"],
    )
    cutoff_figs = "".join(_png(metric_vs_cutoff(result, f), f"{f} at every cutoff") for f in cutoff_families(result))
    bar_figs = "".join(_png(metric_bar(result, m), m) for m in _main_metrics(result))
    delta_figs = "".join(_png(per_query_deltas(result, b), f"per-query deltas vs {b}") for b in baselines)
    headers, pivot = values_pivot(result)
    sections = [
        f'<h1>Offline evaluation: {verdict}</h1><p class="headline">{headline(result)}</p>',
        f'<p class="key">Systems, in the order used everywhere: {key}</p>',
        f"<p>{s['human_queries']} judged queries (split {e(str(s.get('split', '–')))}), "
        f"{s['engagement_queries']} held-out engagement queries. Paired bootstrap: {ev['n_bootstrap']} resamples, "
        f"{ev['confidence']:.0%} percentile intervals; head = the {ev['head_fraction']:.0%} most frequent queries.</p>",
        f"<h2>Inputs</h2>{inputs_table}",
        f"<h2>Blessing gates</h2>{gates}",
    ]
    if baselines:
        sections.append(
            f"<h2>Paired deltas against each baseline</h2>"
            f'<div class="grid">{_png(forest_plot(result), "forest plot of paired deltas")}</div>'
        )
    if cutoff_figs:
        sections.append(f'<h2>Metric against cutoff</h2><div class="grid">{cutoff_figs}</div>')
    sections.append(f'<h2>Metrics at k with confidence intervals</h2><div class="grid">{bar_figs}</div>')
    if baselines:
        sections.append(
            f"<h2>Per-query deltas of {e(ev['gate_metric'])}</h2>"
            f"<p>Wins, ties and losses count queries where {e(names[candidate])} is better, equal or worse.</p>"
            f'<div class="grid">{delta_figs}</div>'
            f"<h2>{e(names[candidate])} against baselines</h2>{_comparisons(result)}"
        )
    sections += [
        f"<h2>Grade distribution of the top {ev['cutoffs'][0]}</h2>"
        f'<div class="grid">{_png(grade_bars(result), "grades")}</div>',
        f"<h2>All values</h2><details><summary>{len(pivot)} metrics × slices, systems as columns "
        f"(value [{ev['confidence']:.0%} CI])</summary>{_table(headers, pivot)}</details>",
    ]
    body = "\n".join(sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>unisup offline evaluation: {e(names[candidate])}</title>
<style>{STYLE}</style></head><body>
{body}
</body></html>
"""
