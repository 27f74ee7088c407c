"""Side-by-side comparison of evaluation runs, e.g. one per fusion preset (the ablation).

Each run is an evaluation ``results.json`` (:func:`unisup.evaluation.results_json`). The
comparison has one row per system: each run's candidate under the run's name, and each
baseline (e.g. BM25) once, with the metric values of the ``all`` slice; written as
Parquet, JSON and a small HTML table.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

import pyarrow as pa

from unisup import storage
from unisup.data.tables import write_table
from unisup.errors import InputError

CANDIDATE = "candidate"


def run_name(overrides: Sequence[str], key: str = "fusion.preset", default: str = "") -> str:
    """The value of ``key`` in ``section.key=value`` overrides (the last one wins)."""
    found = [item.partition("=")[2] for item in overrides if item.partition("=")[0] == key]
    return found[-1] if found else default


def side_by_side(runs: Sequence[tuple[str, dict]], slice_name: str = "all") -> pa.Table:
    """One row per system (each run's candidate, then each baseline once), one column per metric."""
    rows: dict[str, dict[str, float | None]] = {}
    metrics: dict[str, None] = {}
    for name, results in runs:
        if name in rows:
            raise InputError(f"two runs are named {name!r}")
        for row in results["results"]:
            if row["slice"] != slice_name or row["baseline"] is not None:
                continue
            system = name if row["system"] == CANDIDATE else row["system"]
            if system != name and system in rows and row["metric"] in rows[system]:
                continue  # a baseline already taken from an earlier run
            rows.setdefault(system, {})[row["metric"]] = row["value"]
            metrics.setdefault(row["metric"])
    names = [n for n, _ in runs] + [s for s in rows if s not in {n for n, _ in runs}]
    columns = {"system": pa.array(names, pa.string())}
    for metric in metrics:
        columns[metric] = pa.array([rows[s].get(metric) for s in names], pa.float64())
    return pa.table(columns)


def render_html(table: pa.Table, title: str) -> str:
    """A plain HTML table of the comparison (values to 4 decimals)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.column_names)
    body = []
    for row in table.to_pylist():
        cells = [
            f"<td>{html.escape(str(v))}</td>" if isinstance(v, str) else f"<td>{'' if v is None else f'{v:.4f}'}</td>"
            for v in row.values()
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head>"
        f"<body><h2>{html.escape(title)}</h2><table><tr>{head}</tr>{''.join(body)}</table></body></html>"
    )


def compare_runs(result_uris: Sequence[str], names: Sequence[str], table_uri: str, html_uri: str) -> pa.Table:
    """Read each run's results.json, write the side-by-side table (Parquet) and its HTML."""
    if len(result_uris) != len(names):
        raise InputError(f"{len(result_uris)} results but {len(names)} names")
    runs = [(name, json.loads(storage.read_text(uri))) for name, uri in zip(names, result_uris, strict=True)]
    table = side_by_side(runs)
    write_table(table, table_uri)
    storage.write_text(html_uri, render_html(table, "Ablation: fusion presets side by side"))
    return table
