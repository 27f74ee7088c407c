"""The extract-logs component: its function directly, and through kfp.local."""

import json

import kfp.local
import pytest
from kfp import dsl

from components.extract_logs import extract_logs
from unisup.config import load_config
from unisup.data.sample import load_dataset
from unisup.data.tables import read_table
from unisup.schemas import validate
from unisup.simulator import simulate_logs


@pytest.fixture(scope="module")
def small_logs(tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("logs")
    cfg = load_config(
        "local",
        tiny_overrides + ["simulator.num_requests=300", "simulator.num_days=2", "simulator.num_derived_queries=60"],
    )
    summary = simulate_logs(load_dataset(cfg.data), cfg.simulator, cfg.channels, cfg.data.num_grades, out_uri=str(out))
    return out, summary


def test_extract_logs_function(small_logs, tiny_overrides, tmp_path):
    logs, summary = small_logs
    names = ("engagement", "holdout_engagement", "quarantine")
    outputs = {name: dsl.Dataset(uri=str(tmp_path / name)) for name in names}
    report, metrics = dsl.Artifact(uri=str(tmp_path / "report")), dsl.Metrics(uri=str(tmp_path / "metrics"))
    extract_logs.python_func(
        **outputs,
        report=report,
        metrics=metrics,
        logs_uri=str(logs),
        config="local",
        overrides=tiny_overrides + ["extraction.ctr_prior_strength=5", "extraction.holdout_days=0"],
        end_date="2024-03-05",
    )
    engagement = validate(read_table(outputs["engagement"].path), "engagement").accepted
    written = json.loads((tmp_path / "report").read_text())
    assert engagement.num_rows == written["pairs"] == outputs["engagement"].metadata["pairs"] > 0
    assert written["rows_in"] == summary["rows"] == written["rows_accepted"] + written["rows_quarantined"]
    assert outputs["engagement"].metadata["ctr_prior_strength"] == 5.0
    assert outputs["quarantine"].metadata["rows"] == read_table(outputs["quarantine"].path).num_rows
    assert metrics.metadata["rows_in"] == summary["rows"]
    # no hold-out: an empty engagement table with the same columns
    held_out = read_table(outputs["holdout_engagement"].path)
    assert held_out.num_rows == 0 and held_out.schema == read_table(outputs["engagement"].path).schema


def test_the_last_day_is_held_out_for_evaluation(small_logs, tiny_overrides, tmp_path):
    logs, summary = small_logs
    names = ("engagement", "holdout_engagement", "quarantine")
    outputs = {name: dsl.Dataset(uri=str(tmp_path / name)) for name in names}
    extract_logs.python_func(
        **outputs,
        report=dsl.Artifact(uri=str(tmp_path / "report")),
        metrics=dsl.Metrics(uri=str(tmp_path / "metrics")),
        logs_uri=str(logs),
        overrides=tiny_overrides + ["extraction.holdout_days=1"],
    )
    written = json.loads((tmp_path / "report").read_text())
    assert written["window"] == ["2024-03-04", "2024-03-04"]
    assert json.loads(outputs["holdout_engagement"].metadata["window"]) == ["2024-03-05", "2024-03-05"]
    held_out = validate(read_table(outputs["holdout_engagement"].path), "engagement").accepted
    assert held_out.num_rows == outputs["holdout_engagement"].metadata["pairs"] > 0
    # every logged row is read once: by the training window or by the held-out one
    assert written["rows_in"] + outputs["holdout_engagement"].metadata["rows_in"] == summary["rows"]


def test_extract_logs_component_in_kfp_local(small_logs, tiny_overrides, tmp_path):
    logs, summary = small_logs
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    task = extract_logs(logs_uri=str(logs), overrides=tiny_overrides)
    engagement = validate(read_table(task.outputs["engagement"].path), "engagement").accepted
    assert engagement.num_rows == task.outputs["engagement"].metadata["pairs"] > 0
    report = json.loads(open(task.outputs["report"].path).read())
    assert report["rows_in"] == summary["rows"] and task.outputs["metrics"].metadata["rows_in"] == summary["rows"]
    assert read_table(task.outputs["holdout_engagement"].path).num_rows == 0  # extraction.holdout_days is 0
