"""Property tests of the log extraction on generated hostile files and rows.

Any input gives either a report or one of the project's errors (never another exception),
with rows in = accepted + quarantined, a reason on every quarantined row, a report that is
strict JSON and nothing written on an error; files whose columns are all of types the schema
can read are never refused; and on well-typed rows the SQL rules decide as the schema's do.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import schema_verdict
from unisup.config import load_config
from unisup.errors import UnisupError
from unisup.logs import extract_logs
from unisup.schemas import RAW_LOGS

UTC = dt.UTC
ODD = ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\u0085", "\u00a0", "\u2028", "\u3000", " ", "'", '"', ";", "\\"]
TEXT = st.text(st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(ODD)), max_size=6)
IDS = st.one_of(st.sampled_from(["e1", "e2", "p0", "p1", "p4", "p9", "", " "]), TEXT)
FLOATS = st.one_of(st.floats(-1e300, 1e300), st.sampled_from([math.nan, math.inf, -math.inf, -0.0]))
INT64 = st.integers(-(2**63), 2**63 - 1)
TIMES = st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 1, 1), timezones=st.just(UTC))
NEAR = st.datetimes(dt.datetime(2024, 3, 3), dt.datetime(2024, 3, 7), timezones=st.just(UTC))
STRICT = [
    "extraction.bot_max_requests_per_day=3",
    "extraction.bot_min_impressions=2",
    "extraction.bot_max_ctr=0.5",
    "extraction.min_harvest_pairs=1",
]

# For each schema type: the file types its column may be written in, with their values
# (all readable by the extraction), and one type it cannot be read from.
KINDS = {
    pa.string(): [
        (pa.string(), IDS),
        (pa.large_string(), IDS),
        (pa.binary(), st.binary(max_size=4)),
        (pa.int64(), INT64),
    ],
    pa.int16(): [
        (pa.int16(), st.integers(-(2**15), 2**15 - 1)),
        (pa.int64(), INT64),
        (pa.uint64(), st.integers(0, 2**64 - 1)),
        (pa.float64(), FLOATS),
        (pa.string(), st.one_of(TEXT, st.integers(-3, 12).map(str), st.sampled_from(["2.0", "2.5", "1e3"]))),
    ],
    pa.int32(): [
        (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
        (pa.int64(), INT64),
        (pa.float32(), st.floats(-1e6, 1e6, width=32)),
        (pa.string(), st.one_of(TEXT, st.integers(0, 60).map(str))),
    ],
    pa.bool_(): [
        (pa.bool_(), st.booleans()),
        (pa.int8(), st.integers(-3, 3)),
        (pa.string(), st.sampled_from(["true", "false", "t", "1", "0", "yes", "maybe", "", " "])),
    ],
    pa.float64(): [
        (pa.float64(), FLOATS),
        (pa.int64(), INT64),
        (pa.string(), st.one_of(TEXT, st.sampled_from(["1.5", "-2", "nan", "inf", "1e400"]))),
    ],
    pa.timestamp("us", tz="UTC"): [
        (pa.timestamp("us", tz="UTC"), st.one_of(NEAR, TIMES)),
        (pa.timestamp("ms"), NEAR.map(lambda t: t.replace(tzinfo=None))),
        (pa.date32(), NEAR.map(lambda t: t.date())),
        (pa.string(), st.one_of(NEAR.map(dt.datetime.isoformat), TEXT)),
    ],
}
UNREADABLE = {
    pa.string(): (pa.float64(), FLOATS),
    pa.int16(): (pa.bool_(), st.booleans()),
    pa.int32(): (pa.list_(pa.int32()), st.lists(st.integers(0, 9), max_size=2)),
    pa.bool_(): (pa.float64(), FLOATS),
    pa.float64(): (pa.bool_(), st.booleans()),
    pa.timestamp("us", tz="UTC"): (pa.int64(), st.integers(0, 2**40)),  # epochs: seconds or milliseconds?
}
COLUMNS = [(c.name, c.type, c.required) for c in RAW_LOGS.columns] + [("rank_bm25", pa.int32(), False)]
DAMAGE = ["none"] * 12 + ["empty", "truncated", "missing column", "text not UTF-8", "unreadable type"]


@st.composite
def log_file(draw) -> tuple[pa.Table | bytes, bool]:
    """A file of generated rows (or broken bytes) and whether the extraction must refuse it."""
    damage = draw(st.sampled_from(DAMAGE))
    if damage == "empty":
        return b"", True
    rows = draw(st.integers(0, 10))
    present = [c for c in COLUMNS if c[2] or draw(st.booleans())]
    if damage == "missing column":
        present.remove(draw(st.sampled_from([c for c in present if c[2]])))
    unreadable = draw(st.sampled_from(present)) if damage == "unreadable type" else None
    arrays = []
    for column in present:
        file_type, values = UNREADABLE[column[1]] if column == unreadable else draw(st.sampled_from(KINDS[column[1]]))
        arrays.append(pa.array(draw(st.lists(st.one_of(st.none(), values), min_size=rows, max_size=rows)), file_type))
    names = [name for name, _, _ in present]
    if damage == "text not UTF-8" and rows:
        raw = pa.array([b"\xff\xfe"] * rows, pa.binary())
        arrays[names.index("user_id")] = pa.Array.from_buffers(pa.string(), rows, raw.buffers())
    table = pa.Table.from_arrays(arrays, names=names)
    if damage == "truncated":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        return data[: len(data) // 2], True
    return table, damage != "none" and (damage != "text not UTF-8" or rows > 0)


def _write(root: Path, files: list[pa.Table | bytes]) -> int:
    """The files under ``root/logs`` over two days; returns their rows."""
    rows = 0
    for index, file in enumerate(files):
        path = root / "logs" / f"date=2024-03-0{4 + index % 2}" / f"part-{index}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(file, bytes):
            path.write_bytes(file)
        else:
            pq.write_table(file, path)
            rows += file.num_rows
    return rows


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("catalog") / "products.parquet"
    pq.write_table(
        pa.table({"product_id": [f"p{i}" for i in range(5)], "title": [f"item {i}" for i in range(5)]}), path
    )
    return str(path)


def _refuse_constant(name):
    raise AssertionError(f"{name} in the report")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=st.lists(log_file(), min_size=1, max_size=3))
def test_no_input_crashes_and_every_row_is_accounted_for(catalog, files):
    cfg = load_config("local", STRICT).extraction
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows_in = _write(root, [file for file, _ in files])
        out = root / "out" / "engagement.parquet"
        try:
            report = extract_logs(str(root / "logs"), str(out), cfg, catalog)
        except UnisupError as err:
            event(f"refused: {type(err).__name__}")
            assert any(refused for _, refused in files), f"a file of readable types was refused: {err}"
            assert not (root / "out").exists()
            return
        assert not any(refused for _, refused in files), "a file that must be refused was read"
        event(f"extracted, {'some' if report['rows_quarantined'] else 'no'} rows quarantined")
        quarantine = pq.read_table(report["quarantine_uri"])
        assert report["rows_in"] == rows_in == report["rows_accepted"] + report["rows_quarantined"]
        assert quarantine.num_rows == report["rows_quarantined"] == sum(report["quarantined_by_reason"].values())
        assert quarantine["quarantine_reason"].null_count == 0
        assert report["rows_accepted"] == report["rows_used"] + report["rows_bot_filtered"]
        text = (root / "out" / "engagement.report.json").read_text()
        assert json.loads(text, parse_constant=_refuse_constant)["rows_in"] == rows_in
        assert pq.read_table(out).num_rows == report["pairs"]


@st.composite
def typed_rows(draw) -> list[dict]:
    """Rows of the schema's types whose values break the row rules now and then."""
    rows = []
    for _ in range(draw(st.integers(1, 25))):
        impression = draw(st.one_of(st.none(), st.booleans()))
        rows.append(
            {
                "event_id": draw(IDS),
                "request_id": draw(st.one_of(st.none(), st.sampled_from(["r1", "r2", " ", "\u2003"]))),
                "timestamp": draw(st.one_of(st.none(), NEAR)),
                "user_id": draw(st.sampled_from(["u1", "u2", "u3", None])),
                "session_id": "s",
                "user_agent": draw(st.sampled_from(["Mozilla/5.0", "Googlebot/2.1", None])),
                "query": draw(st.one_of(st.none(), st.sampled_from(["usb cable", "tv"]), TEXT)),
                "item_id": draw(st.one_of(st.none(), st.sampled_from(["p0", "p1", "p2", "p9", " "]))),
                "position": draw(st.one_of(st.none(), st.integers(-2, 12))),
                "impression": impression,
                "click": draw(st.one_of(st.none(), st.booleans())),
                "conversion": draw(st.one_of(st.none(), st.booleans())),
                "price": draw(st.one_of(st.none(), FLOATS)),
                "bid": draw(st.one_of(st.none(), FLOATS)),
                "rank_bm25": draw(st.one_of(st.none(), st.integers(1, 50))),
            }
        )
    return rows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=typed_rows())
def test_sql_rules_decide_as_the_schema_rules(catalog, rows):
    schema = RAW_LOGS.arrow_schema(["rank_bm25"])
    table = pa.Table.from_pylist(rows, schema=schema)
    cfg = load_config("local").extraction
    expected = schema_verdict(table, cfg.max_position)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, [table])
        report = extract_logs(
            str(root / "logs"), str(root / "out.parquet"), cfg, catalog, start_date="2024-03-04", end_date="2024-03-04"
        )
        quarantine = pq.read_table(report["quarantine_uri"])
    assert quarantine["source_row"].to_pylist() == expected.quarantined["source_row"].to_pylist()
    assert quarantine["quarantine_reason"].to_pylist() == expected.quarantined["quarantine_reason"].to_pylist()
