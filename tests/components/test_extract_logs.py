"""The extraction component: its function gives the library's tables and metadata, on
DuckDB and on Spark local; and it runs as one task through kfp.local."""

import json

import pytest
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics

from components.extract_logs import extract_logs
from unisup.config import load_config
from unisup.data.dataset import load_dataset
from unisup.data.tables import read_table
from unisup.logs import extract_logs_with_holdout
from unisup.schemas import validate
from unisup.simulator import simulate_logs


@pytest.fixture(scope="module")
def small_logs(tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("logs")
    cfg = load_config(
        "local",
        tiny_overrides + ["simulator.num_requests=300", "simulator.num_days=3", "simulator.num_derived_queries=60"],
    )
    summary = simulate_logs(load_dataset(cfg.data), cfg.simulator, cfg.channels, cfg.data.num_grades, out_uri=str(out))
    return out, summary


def _run_function(logs, overrides, tmp_path, engine="duckdb"):
    outputs = {name: Dataset(uri=str(tmp_path / name)) for name in ("engagement", "holdout_engagement", "quarantine")}
    outputs |= {"report": Artifact(uri=str(tmp_path / "report")), "metrics": Metrics(uri=str(tmp_path / "metrics"))}
    extract_logs.python_func(logs_uri=str(logs), engine=engine, config="local", overrides=overrides, **outputs)
    return outputs


@pytest.mark.parametrize("engine", ["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def test_the_component_gives_the_library_extraction(small_logs, tiny_overrides, tmp_path, engine, request):
    if engine == "spark":
        request.getfixturevalue("spark")
    logs, summary = small_logs
    overrides = tiny_overrides + ["extraction.ctr_prior_strength=5", "extraction.holdout_days=1"]
    out = _run_function(logs, overrides, tmp_path, engine)
    cfg = load_config("local", overrides)
    single, single_held_out = extract_logs_with_holdout(
        str(logs), str(tmp_path / "single.parquet"), str(tmp_path / "single-held.parquet"), cfg.extraction,
        cfg.data.catalog_uri,
    )  # fmt: skip
    engagement = validate(read_table(out["engagement"].path), "engagement").accepted
    assert engagement.num_rows == single["pairs"] == out["engagement"].metadata["pairs"] > 0
    assert out["engagement"].metadata["ctr_prior_strength"] == 5.0 and out["engagement"].metadata["engine"] == engine
    written = json.loads(open(out["report"].path).read())
    assert written["rows_in"] == single["rows_in"] == written["rows_accepted"] + written["rows_quarantined"]
    assert written["quarantined_by_reason"] == single["quarantined_by_reason"]
    assert out["quarantine"].metadata["rows"] == read_table(out["quarantine"].path).num_rows
    assert out["metrics"].metadata["rows_in"] == single["rows_in"]
    held_out = out["holdout_engagement"]
    assert json.loads(held_out.metadata["window"]) == single_held_out["window"]
    assert read_table(held_out.path).num_rows == held_out.metadata["pairs"] == single_held_out["pairs"] > 0
    # every logged row is read once: by the training window or by the held-out one
    assert written["rows_in"] + held_out.metadata["rows_in"] == summary["rows"]


def test_without_a_hold_out_the_held_out_table_is_empty(small_logs, tiny_overrides, tmp_path):
    logs, _ = small_logs
    out = _run_function(logs, tiny_overrides + ["extraction.holdout_days=0"], tmp_path)
    held_out = read_table(out["holdout_engagement"].path)
    assert held_out.num_rows == 0 and held_out.schema == read_table(out["engagement"].path).schema
    assert json.loads(out["holdout_engagement"].metadata["window"]) is None


@dsl.pipeline(name="extraction")
def extraction_only(logs_uri: str, overrides: list):
    extract_logs(logs_uri=logs_uri, config="local", overrides=overrides)


def test_one_task_through_kfp_local(small_logs, tiny_overrides, tmp_path, kfp_local):
    logs, summary = small_logs
    root = kfp_local
    extraction_only(logs_uri=str(logs), overrides=tiny_overrides + ["extraction.holdout_days=1"])
    assert len(list(root.rglob("*/executor_output.json"))) == 1
    report = json.loads(next(root.rglob("extract-logs/report")).read_text())
    task = json.loads(next(root.rglob("extract-logs/executor_output.json")).read_text())
    held_out_rows = task["artifacts"]["holdout_engagement"]["artifacts"][0]["metadata"]["rows_in"]
    assert report["rows_in"] + held_out_rows == summary["rows"]
    engagement = read_table(str(next(root.rglob("extract-logs/engagement"))))
    assert validate(engagement, "engagement").accepted.num_rows == report["pairs"] > 0
