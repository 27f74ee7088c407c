"""The sharded extraction components: chained through their functions, and fanned out with
dsl.ParallelFor through kfp.local."""

import json

import pytest
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Metrics

from components.extract_logs import (
    aggregate_log_shard,
    find_bot_users,
    find_duplicate_events,
    gather_bot_users,
    gather_duplicate_events,
    list_log_parts,
    merge_log_shards,
    plan_log_shards,
    scan_log_shard,
    validate_log_shard,
)
from pipelines._stages import sharded_extraction
from unisup.config import ConfigError, load_config
from unisup.data.sample import load_dataset
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


def _run_functions(logs, overrides, tmp_path, num_shards):
    """Every component's function in pipeline order; the merge's outputs by name."""
    art = lambda name: Artifact(uri=str(tmp_path / name))  # noqa: E731
    plan = art("plan")
    shards = plan_log_shards.python_func(
        plan=plan, logs_uri=str(logs), num_shards=num_shards, config="local", overrides=overrides
    )
    assert shards == list(range(num_shards))
    scans = [art(f"scan{k}") for k in shards]
    for k in shards:
        scan_log_shard.python_func(plan=plan, index=k, scan=scans[k])
    listed = art("listed")
    list_log_parts.python_func(parts=scans, listed=listed)
    assert listed.metadata["parts"] == num_shards
    buckets = [art(f"bucket{b}") for b in shards]
    for b in shards:
        find_duplicate_events.python_func(plan=plan, scans=listed, bucket=b, duplicates=buckets[b])
    duplicates = art("duplicates")
    gather_duplicate_events.python_func(plan=plan, buckets=buckets[::-1], duplicates=duplicates)
    validated = [art(f"validated{k}") for k in shards]
    for k in shards:
        validate_log_shard.python_func(plan=plan, index=k, duplicates=duplicates, validated=validated[k])
    listed = art("listed-validations")
    list_log_parts.python_func(parts=validated, listed=listed)
    flagged = [art(f"bots{b}") for b in shards]
    for b in shards:
        find_bot_users.python_func(plan=plan, validated=listed, bucket=b, bots=flagged[b])
    bots = art("bots")
    gather_bot_users.python_func(plan=plan, buckets=flagged, bots=bots)
    aggregated = [art(f"aggregated{k}") for k in shards]
    for k in shards:
        aggregate_log_shard.python_func(plan=plan, index=k, duplicates=duplicates, bots=bots, aggregated=aggregated[k])
    outputs = {name: Dataset(uri=str(tmp_path / name)) for name in ("engagement", "holdout_engagement", "quarantine")}
    outputs |= {"report": art("report"), "metrics": Metrics(uri=str(tmp_path / "metrics"))}
    merge_log_shards.python_func(
        plan=plan, duplicates=duplicates, bots=bots, scans=scans, validated=validated, aggregated=aggregated, **outputs
    )
    return plan, outputs


def test_components_chained_give_the_single_process_extraction(small_logs, tiny_overrides, tmp_path):
    logs, summary = small_logs
    overrides = tiny_overrides + ["extraction.ctr_prior_strength=5", "extraction.holdout_days=1"]
    plan, out = _run_functions(logs, overrides, tmp_path, num_shards=2)
    assert plan.metadata["training_files"] == 2 and plan.metadata["holdout_window"] == ["2024-03-06", "2024-03-06"]
    cfg = load_config("local", overrides)
    single, single_held_out = extract_logs_with_holdout(
        str(logs), str(tmp_path / "single.parquet"), str(tmp_path / "single-held.parquet"), cfg.extraction,
        cfg.data.catalog_uri,
    )  # fmt: skip
    engagement = validate(read_table(out["engagement"].path), "engagement").accepted
    assert engagement.num_rows == single["pairs"] == out["engagement"].metadata["pairs"] > 0
    assert out["engagement"].metadata["ctr_prior_strength"] == 5.0 and out["engagement"].metadata["shards"] == 2
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
    _, out = _run_functions(logs, tiny_overrides + ["extraction.holdout_days=0"], tmp_path, num_shards=3)
    held_out = read_table(out["holdout_engagement"].path)
    assert held_out.num_rows == 0 and held_out.schema == read_table(out["engagement"].path).schema
    assert json.loads(out["holdout_engagement"].metadata["window"]) is None


@dsl.pipeline(name="sharded-extraction")
def extraction_only(logs_uri: str, num_shards: int, overrides: list):
    sharded_extraction(logs_uri, "", "", num_shards, "local", overrides)


def test_fan_out_through_kfp_local(small_logs, tiny_overrides, tmp_path):
    logs, summary = small_logs
    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    extraction_only(logs_uri=str(logs), num_shards=2, overrides=tiny_overrides + ["extraction.holdout_days=1"])
    stages = ("scan-log-shard", "find-duplicate-events", "validate-log-shard", "find-bot-users", "aggregate-log-shard")
    for stage in stages:
        assert len(list(root.rglob(f"{stage}*/executor_output.json"))) == 2, stage
    report = json.loads(next(root.rglob("merge-log-shards/report")).read_text())
    held_out = json.loads(next(root.rglob("merge-log-shards/executor_output.json")).read_text())
    held_out_rows = held_out["artifacts"]["holdout_engagement"]["artifacts"][0]["metadata"]["rows_in"]
    assert report["shards"] == 2 and report["rows_in"] + held_out_rows == summary["rows"]
    engagement = read_table(str(next(root.rglob("merge-log-shards/engagement"))))
    assert validate(engagement, "engagement").accepted.num_rows == report["pairs"] > 0


def test_a_plan_refuses_more_shards_than_files(small_logs, tiny_overrides, tmp_path):
    logs, _ = small_logs
    plan = Artifact(uri=str(tmp_path / "plan"))
    with pytest.raises(ConfigError, match="num_shards=4: .* the largest window has 3 log file"):
        plan_log_shards.python_func(
            plan=plan, logs_uri=str(logs), num_shards=4, config="local", overrides=tiny_overrides
        )
    assert not (tmp_path / "plan").exists()
