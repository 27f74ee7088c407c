"""The log simulator on the tiny sample with the tiny encoder."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from unisup import storage
from unisup.config import ConfigError, load_config
from unisup.data.dataset import load_dataset
from unisup.schemas import RAW_LOGS, RuleContext, validate
from unisup.simulator import (
    CHANNELS,
    MALFORMED,
    day_partition,
    oracle_grade,
    simulate_configured_logs,
    simulate_logs,
)

SMALL = [
    "simulator.num_requests=600",
    "simulator.num_days=2",
    "simulator.num_derived_queries=150",
    "simulator.num_users=80",
]


def _run(overrides, out, extra=()):
    cfg = load_config("local", overrides + SMALL + list(extra))
    summary = simulate_logs(load_dataset(cfg.data), cfg.simulator, cfg.channels, cfg.data.num_grades, out_uri=str(out))
    return cfg, summary


def _read(out) -> pa.Table:
    files = sorted(p for p in storage.list_prefix(str(out)) if p.endswith(".parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def simulated(tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("logs")
    cfg, summary = _run(tiny_overrides, out)
    return cfg, summary, out, _read(out)


def test_oracle_grades_type_brand_and_words():
    facets = {"brand": ["hp"], "type": ["toner cartridge"], "attribute": ["black"]}
    title = "HP 83 toner cartridge Original Black"
    assert oracle_grade("hp toner cartridge", facets, title) == 3
    assert oracle_grade("canon toner cartridge", facets, title) == 2
    assert oracle_grade("black ink", facets, title) == 1
    assert oracle_grade("gaming laptop", facets, title) == 0
    assert oracle_grade("hp toner cartridge", facets, title, num_grades=2) == 1


def test_logs_follow_the_raw_log_schema_and_layout(simulated):
    cfg, summary, out, table = simulated
    assert table.num_rows == summary["rows"] > 0
    assert sorted(p.split("/")[-2] for p in storage.list_prefix(str(out)) if p.endswith(".parquet")) == [
        "date=2024-03-04",
        "date=2024-03-05",
    ]
    params = json.loads(storage.read_text(f"{out}/_simulation.json"))
    assert params["parameters"]["simulator"]["num_requests"] == 600 and params["summary"]["rows"] == table.num_rows
    assert [f"rank_{c}" for c in CHANNELS] == RAW_LOGS.dynamic_names(table.column_names)
    known = frozenset(pq.read_table(cfg.data.catalog_uri)["product_id"].to_pylist())
    context = RuleContext(
        known_items=known, window_start=np.datetime64("2024-03-04"), window_end=np.datetime64("2024-03-06")
    )
    result = validate(table, "raw_logs", context=context, strict=False)
    # every quarantined row is one the simulator corrupted on purpose, with the same reason
    assert result.reason_counts() == {k: v for k, v in summary["malformed"].items() if v}
    assert summary["requests"] == 600 and summary["impressions"] > 0 and summary["clicks"] > 0


def test_requests_fill_at_most_the_slots_and_keep_under_impressions(simulated):
    cfg, _, _, table = simulated
    shown = table.filter(pc.fill_null(pc.less_equal(table["position"], 10), False))  # corrupted rows aside
    per_request = shown.group_by("request_id").aggregate([("position", "count"), ("position", "max")])
    assert max(per_request["position_count"].to_pylist()) <= cfg.simulator.num_slots
    assert per_request["position_count"].equals(per_request["position_max"].cast(pa.int64()))  # slots 1..n
    assert (table.num_rows - shown.num_rows) > shown.num_rows  # most candidates are under-impressions
    under = table.filter(pc.invert(pc.fill_null(table["impression"], False)))
    assert under["position"].null_count == under.num_rows
    retrieved = np.sum([table[f"rank_{c}"].is_valid().to_numpy() for c in CHANNELS], axis=0)
    assert retrieved.min() >= 1  # every candidate comes from at least one channel


def test_held_out_queries_never_logged(simulated, tiny_sample):
    cfg, summary, _, table = simulated
    split = json.loads(tiny_sample["split"].read_text())
    logged = set(table["query"].drop_null().to_pylist())
    assert not logged & set(split["validation"] + split["test"])
    assert logged & set(split["train"]) and summary["distinct_queries"] > len(split["train"])


def test_bias_report_compares_ctr_with_human_grades(simulated):
    _, summary, _, _ = simulated
    bias = summary["bias"]
    assert bias["queries"] >= 1
    assert bias["ndcg@10_by_human_grade"] == pytest.approx(1.0)
    assert 0.0 <= bias["ndcg@10_by_ctr"] <= 1.0
    assert bias["ndcg@10_gap_ctr_vs_human"] == pytest.approx(1.0 - bias["ndcg@10_by_ctr"], abs=1e-3)


def test_same_seed_same_logs_and_resume_skips_written_days(simulated, tiny_overrides, tmp_path):
    _, _, _, table = simulated
    _, again = _run(tiny_overrides, tmp_path)
    assert _read(tmp_path).equals(table)
    first_day = day_partition(str(tmp_path), "2024-03-04")
    second_day = day_partition(str(tmp_path), "2024-03-05")
    kept = storage.generation(first_day)
    (tmp_path / "date=2024-03-05" / "part-00000.parquet").unlink()
    _, resumed = _run(tiny_overrides, tmp_path)
    assert storage.generation(first_day) == kept  # not rewritten
    assert storage.exists(second_day) and _read(tmp_path).equals(table)
    assert resumed["requests_simulated_now"] == 300 and resumed["rows"] == again["rows"]
    with pytest.raises(ValueError, match="other parameters"):
        _run(tiny_overrides, tmp_path, ["simulator.seed=18"])


def test_other_seed_other_logs(simulated, tiny_overrides, tmp_path):
    _, _, _, table = simulated
    _run(tiny_overrides, tmp_path, ["simulator.seed=99", "simulator.malformed_rate=0"])
    assert not _read(tmp_path).equals(table)


def test_budgets_run_out_with_small_budgets(tiny_overrides, tmp_path):
    _, tight = _run(tiny_overrides, tmp_path / "tight", ["simulator.daily_budget_mean=0.5"])
    _, loose = _run(tiny_overrides, tmp_path / "loose", ["simulator.daily_budget_mean=1000"])
    assert tight["campaigns_exhausted"] > loose["campaigns_exhausted"]
    assert tight["impressions"] < loose["impressions"]
    assert set(MALFORMED) == set(tight["malformed"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("simulator.num_requests=-5", "simulator.num_requests=-5"),
        ("simulator.num_days=-2", "simulator.num_days=-2"),
        ("simulator.num_slots=0", "simulator.num_slots=0"),
        ("simulator.items_per_campaign=0", "simulator.items_per_campaign=0"),
        ("simulator.bot_share=1.5", "simulator.bot_share=1.5"),
        ("simulator.seed=-1", "simulator.seed=-1"),
        ("simulator.click_weights={relevance: .nan}", "simulator.click_weights.relevance=nan"),
        ("simulator.start_date='2024-02-30'", "simulator.start_date='2024-02-30'"),
    ],
)
def test_bad_sizes_are_one_line_errors_and_nothing_is_written(tiny_overrides, tmp_path, capsys, override, key):
    from unisup.cli import main

    args = ["data", "simulate-logs", "--out", str(tmp_path / "logs")]
    for item in tiny_overrides + SMALL + [override]:
        args += ["-o", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"unisup: error: {key}: expected") and "\n" not in err
    assert not (tmp_path / "logs").exists()  # no _simulation.json, no partition


def test_a_day_without_bot_requests(tiny_overrides, tmp_path):
    _, summary = _run(tiny_overrides, tmp_path, ["simulator.bot_share=0"])
    assert summary["bot_requests"] == 0 and summary["requests"] == 600


def test_configured_run_checks_the_settings_before_reading_the_catalog(tiny_overrides, tmp_path):
    cfg = load_config("local", tiny_overrides + SMALL + ["simulator.num_days=-2", f"data.catalog_uri={tmp_path}/none"])
    with pytest.raises(ConfigError, match="simulator.num_days=-2"):
        simulate_configured_logs(cfg, str(tmp_path / "logs"))
    assert not (tmp_path / "logs").exists()
