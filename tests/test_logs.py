"""Log extraction: SQL row rules = schema row rules, accounting, bots, propensities, windows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import schema_verdict
from unisup import storage
from unisup.config import ConfigError, load_config
from unisup.data.dataset import load_dataset
from unisup.data.tables import read_table, write_table
from unisup.logs import extract_logs, holdout_windows, partitions
from unisup.schemas import RAW_LOGS, DataValidationError, validate
from unisup.simulator import simulate_logs

UTC = dt.UTC
DAY = dt.datetime(2024, 3, 4, 12, tzinfo=UTC)


def _logs_table(rows: list[dict]) -> pa.Table:
    schema = RAW_LOGS.arrow_schema(["rank_bm25", "rank_dense"])
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _row(i: int, **changes) -> dict:
    row = {
        "event_id": f"e{i}",
        "request_id": f"r{i // 4}",
        "timestamp": DAY,
        "user_id": f"u{i % 3}",
        "session_id": "s",
        "user_agent": "Mozilla/5.0",
        "query": "usb cable",
        "item_id": f"p{i % 5}",
        "position": 1 + i % 4,
        "impression": True,
        "click": False,
        "conversion": False,
        "price": 10.0,
        "bid": 0.5,
        "rank_bm25": 1 + i % 7,
        "rank_dense": None,
    }
    row.update(changes)
    return row


def _extract(cfg, logs, tmp_path, catalog_uri, **kwargs):
    return extract_logs(str(logs), str(tmp_path / "out" / "engagement.parquet"), cfg, str(catalog_uri), **kwargs)


@pytest.fixture
def catalog_uri(tmp_path):
    uri = tmp_path / "products.parquet"
    pq.write_table(pa.table({"product_id": [f"p{i}" for i in range(5)], "title": [f"item {i}" for i in range(5)]}), uri)
    return uri


def test_sql_rules_agree_with_the_schema_rules(tmp_path, catalog_uri):
    rng = np.random.default_rng(3)
    rows = [_row(i) for i in range(40)]
    rows += [
        _row(100, event_id=None),
        _row(101, event_id="  "),
        _row(102, request_id=""),
        _row(103, query=None),
        _row(104, item_id=None),
        _row(105, timestamp=None),
        _row(106, position=0),
        _row(107, position=11),
        _row(108, position=None),
        _row(109, position=2, impression=False),
        _row(110, position=None, impression=None),
        _row(111, position=None, impression=False, click=True),
        _row(112, click=False, conversion=True),
        _row(113, item_id="p99"),
        _row(114, event_id="e3"),
        _row(115, event_id="e3", item_id="p99"),
        _row(116, timestamp=DAY - dt.timedelta(days=2)),
        _row(117, timestamp=DAY + dt.timedelta(days=1)),
        _row(118, click=None, conversion=True),
        _row(119, position=None, impression=False, click=None),
        _row(120, event_id=None, item_id="p99"),
        _row(121, event_id="e5", position=0),
        _row(122, query="usb\ncable"),
        _row(123, query="usb\x00cable"),
        _row(124, query="\u00a0\u3000"),
        _row(125, price=float("nan")),
        _row(126, price=-1.0),
        _row(127, price=float("inf"), conversion=True, click=True),
    ]
    # random mixes of defects on top
    for i in range(200, 400):
        row = _row(i)
        for key, bad in [
            ("event_id", f"e{rng.integers(0, 60)}"),
            ("item_id", "zz"),
            ("position", None),
            ("impression", False),
            ("click", True),
            ("conversion", True),
            ("query", " "),
            ("query", "usb\tcable"),
            ("price", -2.5),
        ]:
            if rng.random() < 0.12:
                row[key] = bad
        rows.append(row)
    table = _logs_table(rows)
    write_table(table, str(tmp_path / "logs" / "date=2024-03-04" / "part-0.parquet"))
    cfg = load_config("local").extraction
    report = _extract(cfg, tmp_path / "logs", tmp_path, catalog_uri)

    expected = schema_verdict(table, cfg.max_position)
    quarantine = read_table(report["quarantine_uri"])
    assert quarantine["source_row"].to_pylist() == expected.quarantined["source_row"].to_pylist()
    assert quarantine["quarantine_reason"].to_pylist() == expected.quarantined["quarantine_reason"].to_pylist()
    assert set(quarantine["quarantine_reason"].to_pylist()) == {r.reason for r in RAW_LOGS.rules}  # every rule fires
    assert report["rows_in"] == len(rows) == report["rows_accepted"] + report["rows_quarantined"]
    assert report["rows_accepted"] == expected.accepted.num_rows
    assert set(quarantine["source_file"].to_pylist()) == {str(tmp_path / "logs" / "date=2024-03-04" / "part-0.parquet")}


def test_missing_column_names_file_and_column(tmp_path, catalog_uri):
    table = _logs_table([_row(i) for i in range(4)]).drop_columns(["query"])
    path = tmp_path / "logs" / "date=2024-03-04" / "part-0.parquet"
    write_table(table, str(path))
    with pytest.raises(DataValidationError, match=r"part-0\.parquet.*column 'query'"):
        _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)


def test_propensities_are_estimated_from_the_logs(tmp_path, catalog_uri):
    """Same pairs shown at different slots (random order): harvesting recovers (1/p) ** 1."""
    rng = np.random.default_rng(0)
    n_requests, n_queries, per_query, slots = 12000, 60, 5, 4
    attract = rng.uniform(0.1, 0.7, size=(n_queries, per_query))
    query = rng.integers(0, n_queries, n_requests)
    order = np.argsort(rng.random((n_requests, per_query)), axis=1)
    slot = np.argsort(order, axis=1) + 1  # slot of each item, 1..per_query
    shown = slot <= slots
    click = shown & (rng.random((n_requests, per_query)) < attract[query] / slot)
    req = np.repeat(np.arange(n_requests), per_query)
    table = pa.table(
        {
            "event_id": [f"e{i}" for i in range(req.size)],
            "request_id": [f"r{r}" for r in req],
            "timestamp": pa.array(np.full(req.size, int(DAY.timestamp() * 1e6)), pa.timestamp("us", tz="UTC")),
            "user_id": [f"u{r % 500}" for r in req],
            "session_id": ["s"] * req.size,
            "query": [f"q{q}" for q in np.repeat(query, per_query)],
            "item_id": [f"p{i}" for i in np.tile(np.arange(per_query), n_requests)],
            "position": pa.array(slot.ravel(), pa.int16(), mask=~shown.ravel()),
            "impression": shown.ravel(),
            "click": click.ravel(),
            "conversion": np.zeros(req.size, bool),
            "price": np.ones(req.size),
            "bid": np.ones(req.size),
            "rank_bm25": pa.array(np.tile(np.arange(1, per_query + 1), n_requests), pa.int32()),
        }
    )
    write_table(table, str(tmp_path / "logs" / "date=2024-03-04" / "part-0.parquet"))
    cfg = load_config("local", ["extraction.filter_bots=false"]).extraction
    report = _extract(cfg, tmp_path / "logs", tmp_path, catalog_uri)
    assert report["propensities"] == pytest.approx([1.0, 1 / 2, 1 / 3, 1 / 4], abs=0.04)
    assert all(s.startswith("estimated") for s in report["propensity_sources"][1:])
    engagement = read_table(report["engagement_uri"]).to_pandas()
    pair = engagement[(engagement["query"] == "q0") & (engagement["item_id"] == "p0")].iloc[0]
    assert pair["impressions"] + pair["under_impressions"] == int((query == 0).sum())
    assert pair["ctr_debiased"] == pytest.approx(attract[0, 0], abs=0.12)  # debiased CTR ~ attractiveness
    given = load_config(
        "local", ["extraction.estimate_propensities=false", "extraction.propensities=[1.0, 0.9, 0.8, 0.7]"]
    )
    assert _extract(given.extraction, tmp_path / "logs", tmp_path, catalog_uri)["propensities"] == [1.0, 0.9, 0.8, 0.7]


@pytest.fixture(scope="module")
def simulated_logs(tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("logs")
    cfg = load_config(
        "local",
        tiny_overrides
        + [
            "simulator.num_requests=800",
            "simulator.num_days=2",
            "simulator.num_derived_queries=150",
            "simulator.malformed_rate=0.005",
            "simulator.bot_share=0.15",
            "simulator.num_bot_users=4",
        ],
    )
    summary = simulate_logs(load_dataset(cfg.data), cfg.simulator, cfg.channels, cfg.data.num_grades, out_uri=str(out))
    return cfg, summary, out


def test_extraction_of_simulated_logs(simulated_logs, tmp_path):
    cfg, summary, logs = simulated_logs
    report = _extract(cfg.extraction, logs, tmp_path, cfg.data.catalog_uri)
    assert report["rows_in"] == summary["rows"] == report["rows_accepted"] + report["rows_quarantined"]
    assert report["quarantined_by_reason"] == {k: v for k, v in summary["malformed"].items() if v}
    assert report["rows_accepted"] == report["rows_used"] + report["rows_bot_filtered"]
    assert report["channels"] == ["attribute", "bm25", "dense"]
    assert (
        json.loads(storage.read_text(str(tmp_path / "out" / "engagement.report.json")))["rows_in"] == report["rows_in"]
    )

    engagement = read_table(report["engagement_uri"])
    checked = validate(engagement, "engagement", strict=True)
    assert checked.accepted.num_rows == report["pairs"] > 0
    assert pc.sum(engagement["clicks"]).as_py() == report["clicks"] > 0
    # the bots' agents announce them or their click rate does; no bot row is used
    bots = {f"b{i:03d}" for i in range(4)}
    raw = pa.concat_tables([pq.read_table(p) for _, p in partitions(str(logs))])
    bot_rows = pc.sum(pc.is_in(raw["user_id"], value_set=pa.array(sorted(bots)))).as_py()
    assert report["bot_users"] >= 1 and 0 < report["rows_bot_filtered"] <= bot_rows + report["rows_accepted"] // 10

    # best rank and channel count against the raw rows of one pair
    df = engagement.to_pandas()
    top = df.sort_values(["impressions", "query", "item_id"], ascending=[False, True, True]).iloc[0]
    rows = raw.filter(pc.and_(pc.equal(raw["query"], top["query"]), pc.equal(raw["item_id"], top["item_id"])))
    assert top["best_rank_bm25"] == pc.min(rows["rank_bm25"]).as_py() or np.isnan(top["best_rank_bm25"])
    assert top["n_channels"] == sum(
        rows[f"rank_{c}"].null_count < rows.num_rows for c in ("bm25", "dense", "attribute")
    )
    assert 0 < top["ctr_smoothed"] < 1 and 0 < top["cvr_smoothed"] < 1


def test_window_selects_partitions(simulated_logs, tmp_path):
    cfg, summary, logs = simulated_logs
    report = _extract(
        cfg.extraction, logs, tmp_path, cfg.data.catalog_uri, start_date="2024-03-05", end_date="2024-03-05"
    )
    assert report["window"] == ["2024-03-05", "2024-03-05"] and report["files"] == 1
    assert report["rows_in"] < summary["rows"]
    with pytest.raises(DataValidationError, match="no partition in the window"):
        _extract(cfg.extraction, logs, tmp_path, cfg.data.catalog_uri, start_date="2025-01-01", end_date="2025-01-02")


@pytest.mark.gcs
def test_extraction_from_gcs(simulated_logs, gcs_emulator, tmp_path):
    cfg, summary, logs = simulated_logs
    prefix = f"gs://{gcs_emulator}/logs"
    for _, path in partitions(str(logs)):
        storage.upload_file(path, prefix + path[len(str(logs)) :])
    out = f"gs://{gcs_emulator}/engagement/engagement.parquet"
    report = extract_logs(prefix, out, cfg.extraction, cfg.data.catalog_uri)
    assert report["rows_in"] == summary["rows"] and storage.exists(out)
    assert storage.exists(f"gs://{gcs_emulator}/engagement/engagement.quarantine.parquet")
    assert read_table(out).num_rows == report["pairs"]


def test_catalog_is_validated(tmp_path):
    """Only the catalog columns its rules read are loaded, and they are still checked."""
    logs = tmp_path / "logs"
    write_table(_logs_table([_row(i) for i in range(4)]), str(logs / "date=2024-03-04" / "part-0.parquet"))
    catalog = tmp_path / "products.parquet"
    pq.write_table(pa.table({"product_id": ["p0", "p1", "p1"], "title": ["a", "b", "c"], "ean": [1, 2, 3]}), catalog)
    with pytest.raises(DataValidationError, match="duplicate product_id"):
        _extract(load_config("local").extraction, logs, tmp_path, catalog)


def test_holdout_windows_keep_the_last_days_with_logs_apart(tmp_path):
    for day in ("2024-03-04", "2024-03-05", "2024-03-07"):  # no logs on the 6th
        (tmp_path / f"date={day}").mkdir()
        (tmp_path / f"date={day}" / "part-0.parquet").write_bytes(b"")
    cfg = load_config("local").extraction
    assert holdout_windows(str(tmp_path), cfg) == (("2024-03-04", "2024-03-07"), None)
    held_one = dataclasses.replace(cfg, holdout_days=1)
    assert holdout_windows(str(tmp_path), held_one) == (("2024-03-04", "2024-03-06"), ("2024-03-07", "2024-03-07"))
    held_two = dataclasses.replace(cfg, holdout_days=2)
    assert holdout_windows(str(tmp_path), held_two) == (("2024-03-04", "2024-03-04"), ("2024-03-05", "2024-03-07"))
    with pytest.raises(ConfigError, match="leaves none to train on"):
        holdout_windows(str(tmp_path), held_two, end_date="2024-03-05")


# ---------------------------------------------------------------- hostile input


def _write(tmp_path, table: pa.Table, day: str = "2024-03-04", name: str = "part-0.parquet") -> str:
    path = tmp_path / "logs" / f"date={day}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def _cli(tmp_path, catalog_uri, *args: str) -> list[str]:
    return [
        "extract-logs",
        "--logs",
        str(tmp_path / "logs"),
        "--out",
        str(tmp_path / "out" / "engagement.parquet"),
        "-o",
        f"data.catalog_uri={catalog_uri}",
        *args,
    ]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("unisup: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _reasons(report: dict) -> dict[int, str]:
    quarantine = read_table(report["quarantine_uri"])
    return dict(zip(quarantine["source_row"].to_pylist(), quarantine["quarantine_reason"].to_pylist()))


def _accounted(report: dict) -> None:
    quarantine = read_table(report["quarantine_uri"])
    assert report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"] == report["rows_in"]
    assert quarantine.num_rows == report["rows_quarantined"] and quarantine["quarantine_reason"].null_count == 0
    json.loads(storage.read_text(report["quarantine_uri"].replace(".quarantine.parquet", ".report.json")))


def test_sql_injection_through_a_setting_is_refused_and_runs_nothing(tmp_path, catalog_uri, monkeypatch, capsys):
    from unisup.cli import main

    _write(tmp_path, _logs_table([_row(i) for i in range(8)]))
    monkeypatch.chdir(tmp_path)
    hostile = "extraction.duckdb_memory_limit=1GB'; COPY (SELECT 42) TO 'x.csv'; --"
    assert main(_cli(tmp_path, catalog_uri, "-o", hostile)) == 2
    assert "extraction.duckdb_memory_limit=" in _one_line_error(capsys)
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("extraction.duckdb_memory_limit=lots", "extraction.duckdb_memory_limit"),
        ("extraction.duckdb_threads=0", "extraction.duckdb_threads"),
        ("extraction.ctr_prior_mean=.nan", "extraction.ctr_prior_mean"),
        ("extraction.cvr_prior_strength=-1", "extraction.cvr_prior_strength"),
        ("extraction.propensities=[1.0, .inf]", "extraction.propensities[1]"),
        ("extraction.max_position=0", "extraction.max_position"),
        ("extraction.bot_user_agent_pattern=(bot", "extraction.bot_user_agent_pattern"),
        ("extraction.start_date='2024-13-01'", "extraction.start_date"),
        ("extraction.end_date=yesterday", "extraction.end_date"),
    ],
)
def test_a_bad_setting_is_a_one_line_error_naming_its_key(tmp_path, catalog_uri, capsys, override, key):
    from unisup.cli import main

    _write(tmp_path, _logs_table([_row(i) for i in range(8)]))
    assert main(_cli(tmp_path, catalog_uri, "-o", override)) == 2
    assert f"{key}=" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_paths_with_quotes_extract(tmp_path):
    root = tmp_path / "it's; DROP"
    catalog = root / "cata'log.parquet"
    catalog.parent.mkdir(parents=True)
    pq.write_table(pa.table({"product_id": [f"p{i}" for i in range(5)], "title": ["t"] * 5}), catalog)
    path = _write(root, _logs_table([_row(i) for i in range(8)] + [_row(1)]))
    out = root / "o'ut" / "engagement.parquet"
    report = extract_logs(str(root / "logs"), str(out), load_config("local").extraction, str(catalog))
    assert report["rows_in"] == 9 and report["quarantined_by_reason"] == {"duplicate event_id": 1}
    assert read_table(str(out)).num_rows == report["pairs"] > 0
    assert read_table(report["quarantine_uri"])["source_file"].to_pylist() == [path]


def test_bytes_that_are_not_utf8_are_quarantined_not_new_pairs(tmp_path, catalog_uri):
    rows = [_row(i) for i in range(6)]
    table = _logs_table(rows)
    queries = pa.array([b"usb cable"] * 4 + [b"usb \xff cable", b"\xc3("], pa.binary())
    table = table.set_column(table.schema.get_field_index("query"), "query", queries)
    _write(tmp_path, table)
    report = _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    assert _reasons(report) == {4: "query is not valid UTF-8 text", 5: "query is not valid UTF-8 text"}
    assert set(read_table(report["engagement_uri"])["query"].to_pylist()) == {"usb cable"}
    _accounted(report)


def test_text_column_that_is_not_utf8_names_file_column_and_rows(tmp_path, catalog_uri, capsys):
    from unisup.cli import main

    table = _logs_table([_row(i) for i in range(4)])
    raw = pa.array([b"usb cable", b"usb \xff", b"usb cable", b"\xfe"], pa.binary())
    table = table.set_column(3, "user_id", pa.Array.from_buffers(pa.string(), 4, raw.buffers()))
    path = _write(tmp_path, table)
    with pytest.raises(DataValidationError) as err:
        _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    assert err.value.source == path and err.value.column == "user_id" and err.value.rows == [2, 4]
    assert main(_cli(tmp_path, catalog_uri)) == 2
    assert path in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_bad_prices_are_quarantined_and_the_report_is_strict_json(tmp_path, catalog_uri):
    rows = [_row(i, click=True, conversion=True) for i in range(4)]
    rows += [_row(4, price=float("nan")), _row(5, price=-3.0), _row(6, price=float("inf"), click=True, conversion=True)]
    _write(tmp_path, _logs_table(rows))
    report = _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    assert _reasons(report) == {r: "price is negative or not a finite number" for r in (4, 5, 6)}
    assert report["revenue"] == 40.0
    assert read_table(report["engagement_uri"])["revenue"].to_pylist() == [10.0] * 4

    def refuse(constant):
        raise AssertionError(f"{constant} in the report")

    text = storage.read_text(str(tmp_path / "out" / "engagement.report.json"))
    assert json.loads(text, parse_constant=refuse)["rows_in"] == 7


def test_prices_that_overflow_are_an_error_and_nothing_is_written(tmp_path, catalog_uri):
    rows = [_row(i, click=True, conversion=True, price=1.5e308) for i in range(4)]
    _write(tmp_path, _logs_table(rows))
    with pytest.raises(DataValidationError, match="column 'price'"):
        _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    assert not (tmp_path / "out").exists()


def test_values_that_do_not_convert_are_quarantined(tmp_path, catalog_uri):
    """Each file's values are converted from its own types: a value that does not convert
    quarantines its row, whatever the other files hold."""
    rows = [_logs_table([_row(4 * k + i) for i in range(4)]) for k in range(4)]
    wide = rows[1].set_column(8, "position", pa.array([1, 70000, 2, -5], pa.int64()))
    texts = rows[2].set_column(8, "position", pa.array(["1", "abc", " 2 ", "2.5"]))
    stamps = pa.array(["2024-03-04T10:00:00Z", "not a time", None, "2024-03-04 11:00"])
    for name, table in (("a", rows[0]), ("b", wide), ("c", texts), ("d", rows[3].set_column(2, "timestamp", stamps))):
        _write(tmp_path, table, name=f"part-{name}.parquet")
    report = _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    quarantine = read_table(report["quarantine_uri"])
    found = {
        (Path(f).name, row): reason
        for f, row, reason in zip(
            quarantine["source_file"].to_pylist(),
            quarantine["source_row"].to_pylist(),
            quarantine["quarantine_reason"].to_pylist(),
        )
    }
    assert found == {
        ("part-b.parquet", 1): "position is not a whole number from -32768 to 32767",
        ("part-b.parquet", 3): "impossible position",
        ("part-c.parquet", 1): "position is not a whole number from -32768 to 32767",
        ("part-c.parquet", 3): "position is not a whole number from -32768 to 32767",
        ("part-d.parquet", 1): "timestamp is not a timestamp",
        ("part-d.parquet", 2): "missing timestamp",
    }
    assert report["rows_in"] == 16 and report["rows_accepted"] == 10
    _accounted(report)


def test_control_characters_in_queries_are_quarantined(tmp_path, catalog_uri):
    queries = ["usb cable", "usb\x00cable", "usb\x1b[31mcable", "usb\ncable", "usb\tcable", "usb\u2028cable"]
    _write(tmp_path, _logs_table([_row(i, query=q) for i, q in enumerate(queries)]))
    report = _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    assert _reasons(report) == {i: "query holds a control character or a line break" for i in range(1, 6)}
    assert read_table(report["engagement_uri"])["query"].to_pylist() == ["usb cable"]


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("timestamp", pa.array([1709546400] * 4, pa.int64()), "values of type int64 cannot be read as timestamp"),
        ("position", pa.array([[1]] * 4, pa.list_(pa.int64())), "values of type list<element: int64> cannot be read"),
        ("click", pa.array([0.5] * 4), "values of type double cannot be read as bool"),
    ],
)
def test_a_column_of_the_wrong_type_names_file_and_column(tmp_path, catalog_uri, capsys, column, values, message):
    from unisup.cli import main

    table = _logs_table([_row(i) for i in range(4)])
    path = _write(tmp_path, table.set_column(table.schema.get_field_index(column), column, values))
    assert main(_cli(tmp_path, catalog_uri)) == 2
    err = _one_line_error(capsys)
    assert path in err and f"column '{column}'" in err and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_a_file_that_is_not_parquet_is_named(tmp_path, catalog_uri, capsys, damage):
    from unisup.cli import main

    _write(tmp_path, _logs_table([_row(i) for i in range(4)]))
    broken = Path(_write(tmp_path, _logs_table([_row(i) for i in range(4, 8)]), name="part-1.parquet"))
    data = broken.read_bytes()
    broken.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "text": b"event_id,query\n1,x\n"}[damage])
    assert main(_cli(tmp_path, catalog_uri)) == 2
    err = _one_line_error(capsys)
    assert str(broken) in err and "not a readable Parquet file" in err
    assert not (tmp_path / "out").exists()


def test_a_file_duckdb_cannot_read_is_named(tmp_path, catalog_uri):
    table = _logs_table([_row(i) for i in range(2)])
    far = pa.array([10**17, 1709546400], pa.timestamp("s"))  # seconds beyond DuckDB's microsecond range
    path = _write(tmp_path, table.set_column(2, "timestamp", far))
    with pytest.raises(DataValidationError, match="DuckDB cannot read it") as err:
        _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    assert err.value.source == path


@pytest.mark.parametrize(
    ("rename", "message"),
    [
        ({"user_agent": "filename"}, "a name the Parquet reader reserves"),
        ({"user_agent": "Query"}, "two columns have this name"),
        ({"rank_dense": "rank_x) AS y, (SELECT 1"}, "a channel's name holds only"),
    ],
)
def test_column_names_that_sql_cannot_hold_are_refused(tmp_path, catalog_uri, rename, message):
    table = _logs_table([_row(i) for i in range(4)])
    path = _write(tmp_path, table.rename_columns([rename.get(n, n) for n in table.column_names]))
    with pytest.raises(DataValidationError, match=re.escape(message)) as err:
        _extract(load_config("local").extraction, tmp_path / "logs", tmp_path, catalog_uri)
    assert err.value.source == path and err.value.column == list(rename.values())[0]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--start", "2024-03-32"], "start_date"),
        (["--start", "2024-03-06", "--end", "2024-03-04"], "ends (2024-03-04) before it starts (2024-03-06)"),
        (["--start", "2024-03-09"], "ends (2024-03-05) before it starts (2024-03-09)"),
        (["-o", "extraction.holdout_days=2"], "extraction.holdout_days=2"),
    ],
)
def test_bad_windows_are_one_line_errors(tmp_path, catalog_uri, capsys, args, key):
    from unisup.cli import main

    for day in ("2024-03-04", "2024-03-05"):
        _write(tmp_path, _logs_table([_row(i) for i in range(4)]), day=day)
    assert main(_cli(tmp_path, catalog_uri, *args)) == 2
    assert key in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_partition_folder_that_is_not_a_date_is_named(tmp_path):
    path = _write(tmp_path, _logs_table([_row(0)]), day="2024-02-30")
    with pytest.raises(DataValidationError, match="date=2024-02-30 is not a date") as err:
        partitions(str(tmp_path / "logs"))
    assert err.value.source == path


def test_too_little_memory_is_a_config_error(tmp_path, catalog_uri):
    _write(tmp_path, _logs_table([_row(i) for i in range(8)]))
    cfg = load_config("local", ["extraction.duckdb_memory_limit=1KB"]).extraction
    with pytest.raises(ConfigError, match="extraction.duckdb_memory_limit='1KB': DuckDB ran out of memory"):
        _extract(cfg, tmp_path / "logs", tmp_path, catalog_uri)
