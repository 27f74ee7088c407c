"""Splitting a table into shards by key and merging shard outputs back, accounting for rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unisup import storage
from unisup.config import ConfigError
from unisup.data.tables import read_table, write_table
from unisup.errors import InputError
from unisup.sharding import (
    copy_shard,
    merge_outputs,
    merge_reports,
    read_manifest,
    shard_of,
    split_table,
)


def pairs_table(n: int = 500) -> pa.Table:
    return pa.table(
        {
            "query": [f"query {i % 37}" if i % 50 else None for i in range(n)],
            "item_id": [f"p{i}" for i in range(n)],
        }
    )


def test_shard_of_is_stable_and_keeps_a_key_together():
    keys = pa.array(["a", "b", "a", None, "c", "b"])
    shards = shard_of(keys, 4)
    assert shards[0] == shards[2] and shards[1] == shards[5] and shards[3] == 0
    assert shards.tolist() == shard_of(pa.chunked_array([keys[:2], keys[2:]]), 4).tolist()
    assert set(shard_of(pa.array([f"k{i}" for i in range(200)]), 4)) == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        shard_of(keys, 0)


def test_split_accounts_for_every_row_and_keeps_keys_together(tmp_path):
    table = pairs_table()
    folder = tmp_path / "logs"
    (folder / "date=1").mkdir(parents=True)
    pq.write_table(table.slice(0, 200), folder / "date=1" / "part-0.parquet")
    (folder / "date=2").mkdir()
    pq.write_table(table.slice(200), folder / "date=2" / "part-0.parquet")
    manifest = split_table(str(folder), "query", 3, str(tmp_path / "split"), batch_rows=64)
    assert manifest == read_manifest(str(tmp_path / "split"))
    assert manifest["rows_in"] == table.num_rows == sum(s["rows"] for s in manifest["shards"])
    seen: dict[str | None, int] = {}
    rows = []
    for index in range(3):
        out = tmp_path / f"shard{index}.parquet"
        assert copy_shard(str(tmp_path / "split"), index, str(out)) == manifest["shards"][index]["rows"]
        shard = read_table(str(out))
        rows.extend(shard["item_id"].to_pylist())
        for query in set(shard["query"].to_pylist()):
            assert seen.setdefault(query, index) == index, f"{query} is in two shards"
    assert sorted(rows) == sorted(table["item_id"].to_pylist())
    with pytest.raises(IndexError):
        copy_shard(str(tmp_path / "split"), 3, str(tmp_path / "x.parquet"))
    with pytest.raises(ValueError, match="no column 'user'"):
        split_table(str(folder), "user", 2, str(tmp_path / "bad"))


def test_merge_outputs_concatenates_tables_and_sums_reports(tmp_path):
    folders = []
    for index, (labeled, bad) in enumerate([(3, 1), (2, 0)]):
        folder = str(tmp_path / f"out{index}")
        write_table(
            pa.table({"query": ["q"] * labeled, "grade": list(range(labeled))}),
            storage.join(folder, "labels.parquet"),
        )
        storage.write_text(
            storage.join(folder, "report.json"),
            json.dumps(
                {
                    "rows_in": labeled + bad,
                    "labeled": labeled,
                    "quarantined": bad,
                    "backend": "triton",
                    "decided_per_stage": {"fast": labeled - 1, "precise": 1},
                    "seconds": 1.5,
                }
            ),
        )
        folders.append(folder)
    report = merge_outputs(folders, str(tmp_path / "merged"), tables=["labels.parquet"])
    assert read_table(str(tmp_path / "merged" / "labels.parquet"))["grade"].to_pylist() == [
        0,
        1,
        2,
        0,
        1,
    ]
    assert report["rows_in"] == 6 and report["labeled"] + report["quarantined"] == 6
    assert report["decided_per_stage"] == {"fast": 3, "precise": 2} and report["backend"] == "triton"
    assert report["merged_shards"] == 2 and report["merged_rows"] == {"labels.parquet": 5}
    assert json.loads((tmp_path / "merged" / "report.json").read_text()) == report
    assert merge_reports([{"stages": ["a"]}, {"stages": ["b"]}]) == {"stages": [["a"], ["b"]]}
    assert merge_reports([{"grades": [1, 2]}, {"grades": [3, 0]}]) == {"grades": [4, 2]}


@pytest.mark.parametrize(("num_shards", "message"), [(0, "expected at least 1"), (501, "more than the 500 rows")])
def test_a_shard_count_the_rows_cannot_fill_is_refused_before_writing(tmp_path, num_shards, message):
    source = tmp_path / "pairs.parquet"
    pq.write_table(pairs_table(), source)
    with pytest.raises(ConfigError, match=f"num_shards={num_shards}: {message}"):
        split_table(str(source), "query", num_shards, str(tmp_path / "split"))
    assert not (tmp_path / "split").exists()


def test_nothing_to_merge_and_no_key_column_are_input_errors(tmp_path):
    source = tmp_path / "pairs.parquet"
    pq.write_table(pairs_table(), source)
    with pytest.raises(InputError, match="no column 'user' to shard by"):
        split_table(str(source), "user", 2, str(tmp_path / "split"))
    with pytest.raises(InputError, match="no shard output to merge"):
        merge_outputs([], str(tmp_path / "merged"), tables=["labels.parquet"])
