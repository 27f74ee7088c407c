"""The two extraction engines: the SQL written once and transpiled for Spark with its
parameters kept apart, and DuckDB and Spark giving the same tables row for row."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unisup.config import ConfigError, load_config
from unisup.data.tables import read_table
from unisup.engines import check_engine, to_spark_sql
from unisup.logs import extract_logs_with_holdout, quarantine_reason_sql
from unisup.schemas import RAW_LOGS

UTC = dt.UTC
REPORT_VARIES = {"seconds", "rows_per_second", "engagement_uri", "quarantine_uri"}


def test_parameters_stay_parameters_in_spark_sql():
    spark_sql = to_spark_sql(f"SELECT {quarantine_reason_sql()} AS reason FROM src")
    for name in ("max_position", "first_day", "last_day", "whitespace"):
        assert f":{name}" in spark_sql and f"${name}" not in spark_sql
    assert "RLIKE" in spark_sql and "regexp_matches" not in spark_sql.lower()


def test_text_from_bytes_is_null_where_not_utf8_on_spark():
    assert to_spark_sql("SELECT TRY(decode(b)) FROM t") == "SELECT TRY_VALIDATE_UTF8(CAST(b AS STRING)) FROM t"


def test_an_unknown_engine_is_a_config_error():
    cfg = load_config("local", ["extraction.engine=hive"]).extraction
    with pytest.raises(ConfigError, match="extraction.engine='hive': expected one of duckdb, spark"):
        check_engine(cfg)


def _row(event: str, day: int = 0, **changes) -> dict:
    code = sum(map(ord, event))
    row = {
        "event_id": event,
        "request_id": f"r-{event}",
        "timestamp": dt.datetime(2024, 3, 4 + day, 9 + code % 10, tzinfo=UTC),
        "user_id": f"u{code % 4}",
        "session_id": "s",
        "user_agent": "Mozilla/5.0",
        "query": f"q{code % 3}",
        "item_id": f"p{code % 5}",
        "position": 1 + code % 4,
        "impression": True,
        "click": code % 3 == 0,
        "conversion": code % 6 == 0,
        "price": 9.5 + code % 7,
        "bid": 0.5,
        "rank_bm25": 1 + code % 7,
        "rank_dense": 1 + code % 5,
    }
    row.update(changes)
    return row


def _every_reason_rows() -> list[dict]:
    """A row breaking each raw-log rule, control characters and blank texts included."""
    night = dt.datetime(2024, 3, 4, 23, 59, tzinfo=UTC)
    return [
        _row("x0", event_id=None),
        _row("x1", event_id=" \u3000"),
        _row("x2", request_id=""),
        _row("x3", query=None),
        _row("x4", query="usb\ncable"),
        _row("x5", query="usb\u2028cable"),
        _row("x6", item_id="\u00a0"),
        _row("x7", timestamp=None),
        _row("x8", position=0),
        _row("x9", position=11),
        _row("x10", position=None),
        _row("x11", position=None, impression=False, click=True),
        _row("x12", click=False, conversion=True),
        _row("x13", price=float("nan")),
        _row("x14", price=-1.0, conversion=True, click=True),
        _row("x15", item_id="p99"),
        _row("x16", timestamp=night + dt.timedelta(days=3)),
        _row("x17", timestamp=night - dt.timedelta(days=1)),
        _row("n1", day=0),
        _row("n1", day=1),  # duplicate across files and days
    ]


def _converted_files() -> dict[str, pa.Table]:
    """Files whose columns are of other types than the schema's, with values that do and do
    not convert."""
    base = [_row(f"c{i}", position=1 + i % 4, click=False, conversion=False) for i in range(8)]
    schema = RAW_LOGS.arrow_schema(["rank_bm25", "rank_dense"])
    table = pa.Table.from_pydict({f.name: [r[f.name] for r in base] for f in schema}, schema=schema)
    at = table.schema.get_field_index
    wide = table.set_column(at("position"), "position", pa.array([1, 70000, 2, -5, 3, 1, 2, 4], pa.int64()))
    texts = table.set_column(at("position"), "position", pa.array(["1", "abc", " 2 ", "2.5", "3.0", "", "4", "1"]))
    stamps = ["2024-03-04T10:00:00Z", "not a time", None, "2024-03-04 11:00:00", "2024-03-04T12:00:00+01:00"] * 2
    texts = texts.set_column(at("timestamp"), "timestamp", pa.array(stamps[:8]))
    agents = [b"Mozilla/5.0", b"\xff\xfe", b"Googlebot/2.1", None, b"Mozilla/5.0", b"ok", b"\xc3\xa9", b"x"]
    flags = table.set_column(at("user_agent"), "user_agent", pa.array(agents, pa.binary()))
    flags = flags.set_column(at("impression"), "impression", pa.array([1, 1, 2, 1, 0, 1, 1, 1], pa.int8()))
    words = ["yes", "no", "TRUE", "maybe", "f", "0", "1", "n"]
    flags = flags.set_column(at("click"), "click", pa.array(words)).drop_columns(["rank_dense"])
    floats = table.set_column(at("position"), "position", pa.array([1.0, 2.0, 2.5, 1e30, 4.0, 3.0, 2.0, 1.0]))
    return {"wide": wide, "texts": texts, "flags": flags, "floats": floats}


@pytest.fixture
def mixed_logs(crossing_logs, crossing_catalog, tmp_path):
    """The crossing logs (duplicates across files, bots over several files, two days) plus a
    file breaking every rule and files of other column types."""
    root = tmp_path / "logs"
    schema = RAW_LOGS.arrow_schema(["rank_bm25", "rank_dense"])
    rows = _every_reason_rows()
    for day, part in enumerate((rows[:-1], rows[-1:])):
        table = pa.Table.from_pydict({f.name: [r[f.name] for r in part] for f in schema}, schema=schema)
        pq.write_table(table, root / f"date=2024-03-0{4 + day}" / "rules.parquet")
    for name, table in _converted_files().items():
        pq.write_table(table, root / "date=2024-03-04" / f"types-{name}.parquet")
    return str(root)


def _assert_same_table(duck: str, spark: str) -> None:
    a, b = read_table(duck), read_table(spark)
    assert [(f.name, f.type) for f in a.schema] == [(f.name, f.type) for f in b.schema]
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].to_numpy(zero_copy_only=False), b[name].to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":  # sums in another order
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=name)
        else:
            assert a[name].to_pylist() == b[name].to_pylist(), name


def _comparable(report: dict | None) -> dict | None:
    if report is None:
        return None
    kept = {k: v for k, v in report.items() if k not in REPORT_VARIES}
    kept["config"] = {k: v for k, v in kept["config"].items() if k != "engine"}
    return kept


def _extract_both(logs: str, catalog: str, tmp_path, *overrides: str) -> dict:
    outputs = {}
    for engine in ("duckdb", "spark"):
        cfg = load_config("local", [f"extraction.engine={engine}", *overrides]).extraction
        out = tmp_path / engine
        reports = extract_logs_with_holdout(logs, str(out / "e.parquet"), str(out / "h.parquet"), cfg, catalog)
        outputs[engine] = (out, reports)
    (duck, duck_reports), (spark, spark_reports) = outputs["duckdb"], outputs["spark"]
    for a, b in zip(duck_reports, spark_reports, strict=True):
        assert _comparable(a) == _comparable(b)
    names = ["e.parquet", "e.quarantine.parquet", "h.parquet"]
    if duck_reports[1] is not None:
        names.append("h.quarantine.parquet")
    for name in names:
        _assert_same_table(str(duck / name), str(spark / name))
    return duck_reports[0]


BOT_RULES = ["extraction.bot_max_requests_per_day=6", "extraction.bot_min_impressions=6", "extraction.bot_max_ctr=0.9"]


@pytest.mark.spark
def test_spark_gives_the_duckdb_tables_with_a_held_out_day(spark, mixed_logs, crossing_catalog, tmp_path):
    report = _extract_both(
        mixed_logs, crossing_catalog, tmp_path, *BOT_RULES, "extraction.holdout_days=1",
        "extraction.estimate_propensities=false",
    )  # fmt: skip
    reasons = set(report["quarantined_by_reason"])
    assert {rule.reason for rule in RAW_LOGS.rules} - reasons == {"timestamp outside the window"} - reasons
    assert {"position is not a whole number from -32768 to 32767", "timestamp is not a timestamp"} <= reasons
    assert {"user_agent is not valid UTF-8 text", "impression is not true or false"} <= reasons
    assert "click is not true or false" in reasons
    assert report["bot_users"] >= 1 and report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"]


@pytest.mark.spark
def test_spark_gives_the_duckdb_tables_with_estimated_propensities(spark, mixed_logs, crossing_catalog, tmp_path):
    report = _extract_both(
        mixed_logs, crossing_catalog, tmp_path, "extraction.min_harvest_pairs=1", "extraction.filter_bots=false"
    )
    assert report["bot_users"] == 0 and report["rows_bot_filtered"] == 0
    assert any(source.startswith("estimated") for source in report["propensity_sources"])
    assert set(report["quarantined_by_reason"]) >= {rule.reason for rule in RAW_LOGS.rules}


def test_engine_is_a_setting_of_its_own(tmp_path):
    cfg = load_config("local").extraction
    assert cfg.engine == "duckdb" and dataclasses.replace(cfg, engine="spark").engine == "spark"
