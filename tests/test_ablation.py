"""Putting evaluation runs side by side."""

import json

import pytest

from unisup.ablation import compare_runs, render_html, run_name, side_by_side
from unisup.data.tables import read_table


def results(candidate: float, bm25: float) -> dict:
    rows = [
        {
            "system": "candidate",
            "baseline": None,
            "metric": "ndcg@10",
            "slice": "all",
            "value": candidate,
        },
        {
            "system": "candidate",
            "baseline": None,
            "metric": "ndcg@10",
            "slice": "head",
            "value": 0.0,
        },
        {
            "system": "candidate",
            "baseline": "bm25",
            "metric": "ndcg@10",
            "slice": "all",
            "value": None,
        },
        {"system": "bm25", "baseline": None, "metric": "ndcg@10", "slice": "all", "value": bm25},
        {"system": "bm25", "baseline": None, "metric": "recall@10", "slice": "all", "value": 0.5},
    ]
    return {"results": rows}


def test_run_name_reads_the_last_override():
    assert run_name(["data.x=1", "fusion.preset=unified", "fusion.preset=engagement_only"]) == "engagement_only"
    assert run_name(["data.x=1"], default="run-0") == "run-0"


def test_side_by_side_one_row_per_candidate_and_baseline():
    table = side_by_side([("unified", results(0.6, 0.4)), ("engagement_only", results(0.45, 0.4))])
    assert table.column_names == ["system", "ndcg@10", "recall@10"]
    assert table.to_pylist() == [
        {"system": "unified", "ndcg@10": 0.6, "recall@10": None},
        {"system": "engagement_only", "ndcg@10": 0.45, "recall@10": None},
        {"system": "bm25", "ndcg@10": 0.4, "recall@10": 0.5},
    ]
    with pytest.raises(ValueError, match="two runs are named"):
        side_by_side([("a", results(0.1, 0.2)), ("a", results(0.1, 0.2))])


def test_compare_runs_writes_table_and_html(tmp_path):
    uris = []
    for i, value in enumerate((0.6, 0.5)):
        uris.append(str(tmp_path / f"r{i}.json"))
        (tmp_path / f"r{i}.json").write_text(json.dumps(results(value, 0.4)))
    compare_runs(uris, ["unified", "relevance_only"], str(tmp_path / "t.parquet"), str(tmp_path / "t.html"))
    assert read_table(str(tmp_path / "t.parquet"))["system"].to_pylist() == [
        "unified",
        "relevance_only",
        "bm25",
    ]
    page = (tmp_path / "t.html").read_text()
    assert "<td>relevance_only</td><td>0.5000</td>" in page
    assert "&lt;b&gt;" in render_html(side_by_side([("<b>", results(0.1, 0.2))]), "t")
    with pytest.raises(ValueError, match="2 results but 1 names"):
        compare_runs(uris, ["unified"], str(tmp_path / "x.parquet"), str(tmp_path / "x.html"))
