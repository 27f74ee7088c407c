"""The shard components: directly through python_func, and fanned out through kfp.local."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kfp import dsl
from kfp.dsl import Artifact, Dataset

from components.shards import merge_shards, pick_shard, split_shards
from unisup import storage
from unisup.config import ConfigError
from unisup.data.tables import read_table, write_table


@pytest.fixture
def pairs(tmp_path) -> Path:
    path = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"query": [f"q{i % 7}" for i in range(60)], "item_id": [f"p{i}" for i in range(60)]}),
        path,
    )
    return path


def test_functions_split_pick_and_merge(tmp_path, pairs):
    shards = Dataset(name="shards", uri=str(tmp_path / "shards"))
    indices = split_shards.python_func(
        table=Dataset(name="t", uri=str(pairs)), key_column="query", num_shards=3, shards=shards
    )
    assert indices == [0, 1, 2]
    assert shards.metadata["rows_in"] == 60 == sum(shards.metadata["rows_per_shard"])
    parts = []
    for index in indices:
        shard = Dataset(name="shard", uri=str(tmp_path / f"shard{index}.parquet"))
        pick_shard.python_func(shards=shards, index=index, shard=shard)
        assert shard.metadata == {"index": index, "rows": shards.metadata["rows_per_shard"][index]}
        folder = str(tmp_path / f"out{index}")
        write_table(read_table(shard.path), storage.join(folder, "labels.parquet"))
        storage.write_text(storage.join(folder, "report.json"), json.dumps({"rows_in": shard.metadata["rows"]}))
        parts.append(Dataset(name="out", uri=folder))
    merged = Artifact(name="merged", uri=str(tmp_path / "merged"))
    merged_table = Dataset(name="merged_table", uri=str(tmp_path / "merged_table"))
    merge_shards.python_func(
        parts=parts,
        tables=["labels.parquet"],
        main_table="labels.parquet",
        merged=merged,
        merged_table=merged_table,
    )
    assert read_table(merged_table.path).num_rows == 60 == merged_table.metadata["rows"]
    assert sorted(read_table(str(tmp_path / "merged" / "labels.parquet"))["item_id"].to_pylist()) == sorted(
        f"p{i}" for i in range(60)
    )
    assert merged.metadata == {
        "tables": ["labels.parquet"],
        "shards": 3,
        "rows": {"labels.parquet": 60},
    }
    assert json.loads((tmp_path / "merged" / "report.json").read_text())["rows_in"] == 60


@dsl.pipeline(name="shard-fan-out")
def fan_out(table_uri: str, num_shards: int):
    source = dsl.importer(artifact_uri=table_uri, artifact_class=Dataset, reimport=False)
    split = split_shards(table=source.output, key_column="query", num_shards=num_shards)
    with dsl.ParallelFor(split.outputs["Output"]) as index:
        pick_shard(shards=split.outputs["shards"], index=index)


def test_fan_out_through_kfp_local(tmp_path, pairs, kfp_local):
    fan_out(table_uri=str(pairs), num_shards=2)
    picked = sorted(kfp_local.rglob("pick-shard*/shard"))
    assert len(picked) == 2
    rows = [read_table(str(p)).num_rows for p in picked]
    assert sum(rows) == 60 and all(rows)


def test_split_refuses_more_shards_than_rows(tmp_path, pairs):
    shards = Dataset(name="shards", uri=str(tmp_path / "shards"))
    with pytest.raises(ConfigError, match="num_shards=61: more than the 60 rows"):
        split_shards.python_func(
            table=Dataset(name="t", uri=str(pairs)), key_column="query", num_shards=61, shards=shards
        )
    assert not (tmp_path / "shards").exists()
