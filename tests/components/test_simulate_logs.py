"""The simulate_logs and locate_logs components: directly, and through kfp.local."""

import json

import pytest
from kfp import dsl

from components.locate_logs import locate_logs
from components.simulate_logs import simulate_logs
from unisup.config import ConfigError
from unisup.schemas import DataValidationError

SMALL = [
    "simulator.num_requests=60",
    "simulator.num_days=2",
    "simulator.num_derived_queries=20",
    "simulator.channel_depth=5",
]


def test_simulate_then_locate_functions(tmp_path, tiny_overrides):
    logs, metrics = (
        dsl.Dataset(name="logs", uri=str(tmp_path / "logs")),
        dsl.Metrics(name="m", uri=str(tmp_path / "m")),
    )
    out = simulate_logs.python_func(logs=logs, metrics=metrics, config="local", overrides=tiny_overrides + SMALL)
    assert out.logs_uri == logs.uri
    assert logs.metadata["requests"] == 60 == metrics.metadata["requests"]
    assert sorted(p.parent.name for p in (tmp_path / "logs").rglob("part-*.parquet")) == [
        "date=2024-03-04",
        "date=2024-03-05",
    ]
    found = dsl.Metrics(name="found", uri=str(tmp_path / "found"))
    assert locate_logs.python_func(logs_uri=logs.uri, metrics=found) == logs.uri
    assert found.metadata["days"] == 2 and found.metadata["first_date"] == "2024-03-04"
    with pytest.raises(DataValidationError, match="no Parquet log files"):
        locate_logs.python_func(logs_uri=str(tmp_path / "empty"), metrics=found)


def test_simulate_and_locate_through_kfp_local(tmp_path, tiny_overrides, kfp_local):

    @dsl.pipeline(name="simulate-locate")
    def pipeline(overrides: list):
        simulated = simulate_logs(overrides=overrides)
        locate_logs(logs_uri=simulated.outputs["logs_uri"])

    pipeline(overrides=tiny_overrides + SMALL)
    output = json.loads(next(kfp_local.rglob("locate-logs/executor_output.json")).read_text())
    logs = next(kfp_local.rglob("simulate-logs/logs"))
    assert output["parameterValues"]["Output"] == str(logs)
    assert output["artifacts"]["metrics"]["artifacts"][0]["metadata"]["days"] == 2
    assert len(list(logs.rglob("date=*/part-*.parquet"))) == 2


def test_bad_sizes_are_refused_before_anything_is_read_or_written(tmp_path):
    logs = dsl.Dataset(name="logs", uri=str(tmp_path / "logs"))
    metrics = dsl.Metrics(name="m", uri=str(tmp_path / "m"))
    # no data overrides: the bundled sample is not even loaded
    with pytest.raises(ConfigError, match=r"simulator\.num_days=-1: expected"):
        simulate_logs.python_func(logs=logs, metrics=metrics, config="local", overrides=["simulator.num_days=-1"])
    assert not (tmp_path / "logs").exists()
