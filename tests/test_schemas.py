import numpy as np
import pyarrow as pa
import pytest

from unisup.schemas import (
    ARTIFACTS,
    QUARANTINE_REASON,
    DataValidationError,
    RuleContext,
    empty_quarantine,
    validate,
)


def judgments(**overrides):
    data = {"query": ["tv", "tv", "usb hub"], "product_id": ["1", "2", "3"], "rating": ["3", "0", "2"]}
    data.update(overrides)
    return pa.table(data)


def test_every_artifact_has_an_arrow_schema():
    for name, schema in ARTIFACTS.items():
        arrow = schema.arrow_schema()
        assert arrow.names == [c.name for c in schema.columns], name


def test_dynamic_channel_columns_are_typed():
    schema = ARTIFACTS["raw_logs"].arrow_schema(["rank_bm25", "rank_dense"])
    assert schema.field("rank_bm25").type == pa.int32()
    assert ARTIFACTS["raw_logs"].dynamic_names(["query", "rank_bm25", "rank_"]) == ["rank_bm25"]


def test_valid_table_is_cast_and_accepted():
    result = validate(judgments(), "judgments", "j.csv", RuleContext(known_items=frozenset("123")))
    assert result.accepted.num_rows == 3 and result.quarantined.num_rows == 0
    assert result.accepted.schema.field("rating").type == pa.int8()
    assert result.accepted["rater_1"].null_count == 3  # optional column added as nulls


def test_missing_column_names_the_column():
    with pytest.raises(DataValidationError, match=r"judgments \(j.csv\): column 'rating'.*required column is missing"):
        validate(pa.table({"query": ["a"], "product_id": ["1"]}), "judgments", "j.csv")


def test_wrong_type_names_column_rows_and_values():
    with pytest.raises(DataValidationError) as err:
        validate(judgments(rating=["3", "high", "x"]), "judgments", "j.csv")
    assert err.value.column == "rating" and err.value.rows == [2, 3]
    assert "'high'" in str(err.value)


def test_strict_rule_violation_names_rule_and_rows():
    with pytest.raises(DataValidationError) as err:
        validate(judgments(rating=["3", "7", "2"]), "judgments", "j.csv")
    assert err.value.rule == "rating_in_scale" and err.value.rows == [2]
    assert "column 'rating', row 2" in str(err.value)


def test_quarantine_accounts_for_every_row():
    table = pa.table(
        {
            "query": ["tv", "tv", "", "tv", "tv"],
            "product_id": ["1", "1", "2", "9", "2"],
            "rating": [3, 2, 1, 0, 5],
        }
    )
    result = validate(table, "judgments", "j.csv", RuleContext(known_items=frozenset("12")), strict=False)
    assert result.rows_in == 5 == result.accepted.num_rows + result.quarantined.num_rows
    reasons = dict(zip(result.quarantined["source_row"].to_pylist(), result.quarantined[QUARANTINE_REASON].to_pylist()))
    assert reasons == {
        1: "duplicate (query, product_id) judgment",
        2: "missing query",
        3: "product_id not in the catalog",
        4: "rating outside the grade scale",
    }
    assert result.reason_counts()["missing query"] == 1


def test_raw_log_rules():
    ts = np.array(
        ["2026-01-01T10:00", "2026-01-01T11:00", "2026-01-05T00:00", "2026-01-01T12:00"], dtype="datetime64[us]"
    )
    table = pa.table(
        {
            "event_id": ["e1", "e2", "e3", "e1"],
            "request_id": ["r1", "r1", "r2", "r3"],
            "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "user_id": ["u"] * 4,
            "session_id": ["s"] * 4,
            "query": ["tv"] * 4,
            "item_id": ["1", "2", "1", "1"],
            "position": pa.array([1, None, 2, 1], pa.int16()),
            "impression": [True, False, True, True],
            "click": [True, True, False, False],
            "conversion": [False, False, False, False],
            "price": [1.0] * 4,
            "bid": [0.5] * 4,
            "rank_bm25": pa.array([1, 3, None, 1], pa.int32()),
        }
    )
    ctx = RuleContext(
        known_items=frozenset("12"),
        window_start=np.datetime64("2026-01-01"),
        window_end=np.datetime64("2026-01-02"),
    )
    result = validate(table, "raw_logs", "logs", ctx, strict=False)
    assert result.accepted["event_id"].to_pylist() == ["e1"]
    assert result.quarantined[QUARANTINE_REASON].to_pylist() == [
        "click without an impression",
        "timestamp outside the window",
        "duplicate event_id",
    ]
    assert "rank_bm25" in result.accepted.column_names


def test_empty_table_and_empty_quarantine():
    with pytest.raises(DataValidationError, match="empty"):
        validate(pa.table({}), "catalog", "c.parquet")
    with pytest.raises(DataValidationError, match="header but no rows"):
        validate(
            pa.table({"product_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}), "catalog", "c.csv"
        )
    assert QUARANTINE_REASON in empty_quarantine(ARTIFACTS["catalog"]).column_names
