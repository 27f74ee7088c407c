"""Sharded log extraction: the same tables and report as the single-process extraction, for
any shard count, with duplicates, bots, requests and channels that cross shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unisup import storage
from unisup.config import ConfigError, load_config
from unisup.data.tables import read_table
from unisup.log_shards import TRAINING, extract_logs_sharded, plan_extraction
from unisup.logs import extract_logs, extract_logs_with_holdout, partitions
from unisup.schemas import DataValidationError

TIMING = {"seconds", "rows_per_second", "engagement_uri", "quarantine_uri", "shards", "stage_seconds"}
TIMING |= {"duplicated_event_ids"}  # only the sharded report counts them


def _cfg(*overrides: str):
    return load_config(
        "local",
        [
            "extraction.bot_max_requests_per_day=6",
            "extraction.bot_min_impressions=6",
            "extraction.bot_max_ctr=0.9",
            "extraction.estimate_propensities=false",
            *overrides,
        ],
    ).extraction


def _assert_same_tables(single: str, sharded: str) -> None:
    a, b = read_table(single), read_table(sharded)
    # column names and types; DuckDB marks a column not null where the statistics of the files read prove it
    assert [(f.name, f.type) for f in a.schema] == [(f.name, f.type) for f in b.schema]
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].to_numpy(zero_copy_only=False), b[name].to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":  # sums over shards add in another order
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12, err_msg=name)
        else:
            assert a[name].equals(b[name]), name


def _assert_same_report(single: dict, sharded: dict) -> None:
    assert {k: v for k, v in single.items() if k not in TIMING} == {k: v for k, v in sharded.items() if k not in TIMING}


def test_hard_cases_cross_files(crossing_logs, crossing_catalog, tmp_path):
    """The single-process extraction finds every case the shards must agree on."""
    report = extract_logs(crossing_logs, str(tmp_path / "single.parquet"), _cfg(), crossing_catalog)
    assert report["bot_users_by_rule"] == {"user_agent": 1, "volume": 1, "ctr": 1}
    assert report["quarantined_by_reason"]["duplicate event_id"] == 3
    assert report["channels"] == ["bm25", "dense"]


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 6])
def test_any_shard_count_gives_the_single_process_tables(crossing_logs, crossing_catalog, tmp_path, num_shards):
    cfg = _cfg()
    single = extract_logs(crossing_logs, str(tmp_path / "single.parquet"), cfg, crossing_catalog)
    sharded, held_out = extract_logs_sharded(
        crossing_logs,
        str(tmp_path / "sharded.parquet"),
        str(tmp_path / "held_out.parquet"),
        cfg,
        crossing_catalog,
        num_shards,
        str(tmp_path / "work"),
    )
    _assert_same_report(single, sharded)
    assert sharded["shards"] == num_shards and sharded["duplicated_event_ids"] == 3
    assert set(sharded["stage_seconds"]) == {
        "scan",
        "duplicates",
        "gather_duplicates",
        "validate",
        "bots",
        "gather_bots",
        "aggregate",
        "merge",
    }
    assert len(sharded["stage_seconds"]["duplicates"]) == len(sharded["stage_seconds"]["bots"]) == num_shards
    _assert_same_tables(str(tmp_path / "single.parquet"), str(tmp_path / "sharded.parquet"))
    _assert_same_tables(str(tmp_path / "single.quarantine.parquet"), str(tmp_path / "sharded.quarantine.parquet"))
    assert held_out is None and read_table(str(tmp_path / "held_out.parquet")).num_rows == 0


def test_held_out_days_are_a_window_of_their_own(crossing_logs, crossing_catalog, tmp_path):
    cfg = _cfg("extraction.holdout_days=1")
    single = extract_logs_with_holdout(
        crossing_logs, str(tmp_path / "a.parquet"), str(tmp_path / "a-held.parquet"), cfg, crossing_catalog
    )
    sharded = extract_logs_sharded(
        crossing_logs, str(tmp_path / "b.parquet"), str(tmp_path / "b-held.parquet"), cfg, crossing_catalog, 2,
        str(tmp_path / "work"),
    )  # fmt: skip
    for a, b in zip(single, sharded, strict=True):
        _assert_same_report(a, b)
    assert sharded[1]["window"] == ["2024-03-05", "2024-03-05"] and sharded[1]["pairs"] > 0
    _assert_same_tables(str(tmp_path / "a-held.parquet"), str(tmp_path / "b-held.parquet"))
    _assert_same_tables(str(tmp_path / "a-held.quarantine.parquet"), str(tmp_path / "b-held.quarantine.parquet"))


def test_plan_cuts_each_window_into_contiguous_shards(crossing_logs, crossing_catalog):
    plan = plan_extraction(crossing_logs, _cfg("extraction.holdout_days=1"), crossing_catalog, 2)
    training, held_out = plan["windows"]
    assert training["name"] == TRAINING and training["window"] == ["2024-03-04", "2024-03-04"]
    assert [(f["file_index"], f["shard"]) for f in training["files"]] == [(0, 0), (1, 0), (2, 1)]
    assert [(f["file_index"], f["shard"]) for f in held_out["files"]] == [(3, 0), (4, 0), (5, 1)]
    assert [f["uri"] for f in training["files"] + held_out["files"]] == [u for _, u in partitions(crossing_logs)]
    with pytest.raises(ConfigError, match="num_shards=0: expected at least 1"):
        plan_extraction(crossing_logs, _cfg(), crossing_catalog, 0)


def test_a_broken_file_is_named_by_its_shard(crossing_logs, crossing_catalog, tmp_path):
    broken = partitions(crossing_logs)[4][1]
    pq.write_table(pq.read_table(broken).drop_columns(["request_id"]), broken)
    with pytest.raises(DataValidationError, match="request_id") as err:
        extract_logs_sharded(
            crossing_logs, str(tmp_path / "b.parquet"), str(tmp_path / "h.parquet"), _cfg(), crossing_catalog, 3,
            str(tmp_path / "work"),
        )  # fmt: skip
    assert broken in str(err.value)
    assert not storage.exists(str(tmp_path / "b.parquet"))


@pytest.mark.gcs
def test_sharded_extraction_on_gcs(crossing_logs, crossing_catalog, gcs_emulator, tmp_path):
    prefix = f"gs://{gcs_emulator}/crossing-logs"
    for _, path in partitions(crossing_logs):
        storage.upload_file(path, prefix + path[len(crossing_logs) :])
    single = extract_logs(crossing_logs, str(tmp_path / "single.parquet"), _cfg(), crossing_catalog)
    out = f"gs://{gcs_emulator}/sharded/engagement.parquet"
    sharded, _ = extract_logs_sharded(
        prefix, out, f"gs://{gcs_emulator}/sharded/held.parquet", _cfg(), crossing_catalog, 3,
        f"gs://{gcs_emulator}/sharded/stages",
    )  # fmt: skip
    _assert_same_report({**single, "logs_uri": prefix}, sharded)
    local = tmp_path / "from-gcs.parquet"
    storage.download_file(out, local)
    _assert_same_tables(str(tmp_path / "single.parquet"), str(local))
    assert storage.exists(f"gs://{gcs_emulator}/sharded/stages/duplicates/training/duplicates.parquet")


def test_a_rerun_keeps_the_finished_stages_of_the_same_plan(crossing_logs, crossing_catalog, tmp_path, monkeypatch):
    from unisup import log_shards

    work = tmp_path / "work"
    args = (crossing_logs, str(tmp_path / "b.parquet"), str(tmp_path / "h.parquet"))
    first, _ = extract_logs_sharded(*args, _cfg(), crossing_catalog, 3, str(work))
    # a crash in the second round: one validation unfinished (its record is written last), no aggregation yet
    (work / "validate-00001" / "stage.json").unlink()
    for k in range(3):
        (work / f"aggregate-{k:05d}" / "stage.json").unlink()
    calls = []
    for name in (
        "scan_shard",
        "find_duplicates",
        "gather_duplicates",
        "validate_shard",
        "find_bots",
        "gather_bots",
        "aggregate_shard",
    ):
        real = getattr(log_shards, name)
        monkeypatch.setattr(log_shards, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    again, _ = extract_logs_sharded(*args, _cfg(), crossing_catalog, 3, str(work))
    assert calls == ["validate_shard", "aggregate_shard", "aggregate_shard", "aggregate_shard"]
    _assert_same_report(first, again)
    calls.clear()  # another config is another plan: every stage again
    extract_logs_sharded(*args, _cfg("extraction.bot_max_ctr=0.8"), crossing_catalog, 3, str(work))
    assert calls.count("scan_shard") == 3 and "find_bots" in calls


def test_the_reduces_take_the_shards_in_any_order_and_miss_none(crossing_logs, crossing_catalog, tmp_path):
    from unisup.log_shards import merge_extraction, read_plan

    work = tmp_path / "work"
    extract_logs_sharded(
        crossing_logs, str(tmp_path / "b.parquet"), str(tmp_path / "h.parquet"), _cfg(), crossing_catalog, 3,
        str(work),
    )  # fmt: skip
    plan = read_plan(str(work / "plan.json"))
    stages = {s: [str(work / f"{s}-{k:05d}") for k in (2, 0, 1)] for s in ("validate", "aggregate")}
    out = {TRAINING: (str(tmp_path / "again.parquet"), None, None)}
    merge_extraction(plan, str(work / "duplicates"), str(work / "bots"), stages["validate"], stages["aggregate"], out)
    _assert_same_tables(str(tmp_path / "b.quarantine.parquet"), str(tmp_path / "again.quarantine.parquet"))
    _assert_same_tables(str(tmp_path / "b.parquet"), str(tmp_path / "again.parquet"))
    (work / "aggregate-00001" / TRAINING / "slots.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="shard 1 of the training window: no slots.parquet"):
        merge_extraction(plan, str(work / "duplicates"), str(work / "bots"), *stages.values(), out)


def test_scans_are_read_from_local_or_gcs_locations_only(crossing_logs, crossing_catalog, tmp_path):
    from unisup.log_shards import find_duplicates

    plan = plan_extraction(crossing_logs, _cfg(), crossing_catalog, 2)
    with pytest.raises(ValueError, match="s3://bucket/scan: shard outputs are read by URI"):
        find_duplicates(plan, ["s3://bucket/scan"], 0, str(tmp_path / "dups"))


@pytest.mark.parametrize(("shards", "message"), [("100000", "use at most 6 shards"), ("-2", "expected at least 1")])
def test_a_shard_count_the_files_cannot_fill_is_a_one_line_error(
    crossing_logs, crossing_catalog, tmp_path, capsys, shards, message
):
    from unisup.cli import main

    out = tmp_path / "out" / "engagement.parquet"
    args = ["extract-logs", "--logs", crossing_logs, "--out", str(out), "-o", f"data.catalog_uri={crossing_catalog}"]
    assert main(args + ["--shards", shards]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"unisup: error: num_shards={shards}: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_values_that_do_not_convert_give_the_same_tables_over_shards(crossing_logs, crossing_catalog, tmp_path):
    """Files of other types in some shards only: each shard converts its own files' values."""
    files = [uri for _, uri in partitions(crossing_logs)]
    table = pq.read_table(files[1])
    texts = pa.array(
        [p if p is None else f"{p}" if i % 5 else "abc" for i, p in enumerate(table["position"].to_pylist())]
    )
    pq.write_table(table.set_column(table.schema.get_field_index("position"), "position", texts), files[1])
    table = pq.read_table(files[4])
    wide = pa.array([70000 if i % 7 == 0 else p for i, p in enumerate(table["position"].to_pylist())], pa.int64())
    pq.write_table(table.set_column(table.schema.get_field_index("position"), "position", wide), files[4])
    cfg = _cfg()
    single = extract_logs(crossing_logs, str(tmp_path / "single.parquet"), cfg, crossing_catalog)
    assert single["quarantined_by_reason"]["position is not a whole number from -32768 to 32767"] > 2
    sharded, _ = extract_logs_sharded(
        crossing_logs, str(tmp_path / "sharded.parquet"), str(tmp_path / "held.parquet"), cfg, crossing_catalog, 3,
        str(tmp_path / "work"),
    )  # fmt: skip
    _assert_same_report(single, sharded)
    _assert_same_tables(str(tmp_path / "single.parquet"), str(tmp_path / "sharded.parquet"))
    _assert_same_tables(str(tmp_path / "single.quarantine.parquet"), str(tmp_path / "sharded.quarantine.parquet"))


def test_sharded_extraction_under_paths_with_quotes(crossing_logs, crossing_catalog, tmp_path):
    work = tmp_path / "it's work"
    sharded, _ = extract_logs_sharded(
        crossing_logs, str(work / "o'ut.parquet"), str(work / "h'eld.parquet"), _cfg(), crossing_catalog, 2,
        str(work / "stages'"),
    )  # fmt: skip
    single = extract_logs(crossing_logs, str(tmp_path / "single.parquet"), _cfg(), crossing_catalog)
    _assert_same_report(single, sharded)
    _assert_same_tables(str(tmp_path / "single.parquet"), str(work / "o'ut.parquet"))
