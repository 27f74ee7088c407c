"""Split a table into N shards by a key and merge per-shard stage outputs back.

The pipeline fans a stage out over shards (``dsl.ParallelFor``) so that it spreads
across nodes: :func:`split_table` cuts the input by a stable hash of a key column (rows
with one key, e.g. one query, land in one shard, so per-key checks such as duplicate
detection still see all of that key's rows), :func:`copy_shard` hands one shard to one
task, and :func:`merge_outputs` concatenates the shards' output tables and sums their
reports. Every row is accounted for: rows in = the sum of the shard rows, checked.

    <split>/manifest.json  part-00000-of-00004.parquet ...
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from unisup import storage
from unisup.config import ConfigError
from unisup.data.tables import write_table
from unisup.errors import InputError

MANIFEST = "manifest.json"


def shard_file(index: int, num_shards: int) -> str:
    """File name of shard ``index`` of ``num_shards``."""
    return f"part-{index:05d}-of-{num_shards:05d}.parquet"


def shard_of(keys: pa.Array | pa.ChunkedArray, num_shards: int) -> np.ndarray:
    """Shard index of each key: CRC-32 of its UTF-8 text modulo ``num_shards`` (stable
    across processes and machines, unlike ``hash``); nulls go to shard 0."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    encoded = pc.dictionary_encode(pc.cast(keys, pa.string()))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    buckets = np.array(
        [zlib.crc32(k.encode()) % num_shards for k in encoded.dictionary.to_pylist()],
        dtype=np.int64,
    )
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    valid = encoded.indices.is_valid().to_numpy(zero_copy_only=False)
    out = np.zeros(len(encoded), dtype=np.int64)
    out[valid] = buckets[codes[valid].astype(np.int64)]
    return out


def _parquet_files(uri: str) -> list[str]:
    """The file itself (a pipeline artifact needs no suffix), or the Parquet files in a folder."""
    listed = storage.list_prefix(uri)
    files = listed if listed == [str(uri)] else [u for u in listed if u.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"{uri}: no Parquet file to split")
    return files


def split_table(source_uri: str, key_column: str, num_shards: int, out_uri: str, batch_rows: int = 65536) -> dict:
    """Write the rows of ``source_uri`` (a Parquet file or a folder of them, local or gs://)
    into ``num_shards`` Parquet shards under ``out_uri`` by the hash of ``key_column``.

    Reads in record batches, so the input need not fit in memory. Every shard file is
    written, empty ones included, so ``num_shards`` is from 1 to the rows (checked before
    anything is written). Returns the manifest (also ``<out>/manifest.json``).
    """
    if num_shards < 1:
        raise ConfigError(f"num_shards={num_shards}: expected at least 1")
    files = _parquet_files(source_uri)
    names = [shard_file(i, num_shards) for i in range(num_shards)]
    rows_in = 0
    with tempfile.TemporaryDirectory(prefix="unisup-split-") as tmp:
        local_files = [
            str(storage.download_file(uri, Path(tmp) / f"in-{i:05d}.parquet")) if storage.is_gcs(uri) else uri
            for i, uri in enumerate(files)
        ]
        dataset = ds.dataset(local_files, format="parquet")
        if key_column not in dataset.schema.names:
            raise InputError(
                f"{source_uri}: no column {key_column!r} to shard by (columns: {', '.join(dataset.schema.names)})"
            )
        available = dataset.count_rows()
        if num_shards > max(available, 1):
            raise ConfigError(f"num_shards={num_shards}: more than the {available} rows of {source_uri} to split")
        rows = [0] * num_shards
        writers = [pq.ParquetWriter(Path(tmp) / name, dataset.schema, compression="zstd") for name in names]
        try:
            for batch in dataset.to_batches(batch_size=batch_rows):
                rows_in += batch.num_rows
                shard = shard_of(batch.column(key_column), num_shards)
                for i in np.unique(shard):
                    part = batch.filter(pa.array(shard == i))
                    writers[i].write_batch(part)
                    rows[i] += part.num_rows
        finally:
            for writer in writers:
                writer.close()
        if rows_in != sum(rows):
            raise AssertionError(f"{source_uri}: rows in {rows_in} != rows in the shards {sum(rows)}")
        for name in names:
            storage.upload_file(Path(tmp) / name, storage.join(out_uri, name))
    manifest = {
        "source": source_uri,
        "key_column": key_column,
        "num_shards": num_shards,
        "rows_in": rows_in,
        "shards": [{"file": name, "rows": n} for name, n in zip(names, rows, strict=True)],
    }
    storage.write_text(storage.join(out_uri, MANIFEST), json.dumps(manifest, indent=1))
    return manifest


def read_manifest(split_uri: str) -> dict:
    """The manifest written by :func:`split_table`."""
    return json.loads(storage.read_text(storage.join(split_uri, MANIFEST)))


def copy_shard(split_uri: str, index: int, out_uri: str) -> int:
    """Copy shard ``index`` of a split to ``out_uri`` (one Parquet file); returns its rows."""
    manifest = read_manifest(split_uri)
    if not 0 <= index < manifest["num_shards"]:
        raise IndexError(f"{split_uri}: shard {index} out of range 0..{manifest['num_shards'] - 1}")
    entry = manifest["shards"][index]
    storage.write_bytes(out_uri, storage.read_bytes(storage.join(split_uri, entry["file"])))
    return entry["rows"]


def _read_parquet(uri: str) -> pa.Table:
    """A Parquet table read from a local file (a copy for gs://): read from Python bytes, an Arrow
    thread can be left releasing them while the interpreter exits, which aborts it."""
    with storage.local_copy(uri) as path:
        return pq.read_table(path)


def merge_tables(uris: Iterable[str], out_uri: str) -> int:
    """Concatenate Parquet tables (schemas unified, shard order kept) into ``out_uri``;
    returns the rows written."""
    tables = [_read_parquet(uri) for uri in uris]
    if not tables:
        raise InputError(f"{out_uri}: nothing to merge")
    merged = pa.concat_tables(tables, promote_options="default")
    write_table(merged, out_uri)
    return merged.num_rows


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-shard reports: numbers are summed (lists of numbers element-wise),
    mappings merged key by key, other values kept when every shard agrees and listed per
    shard otherwise."""
    if not reports:
        return {}
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for report in reports for k in report):
        values = [report[key] for report in reports if key in report]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values)
        elif all(_numbers(v) and len(v) == len(values[0]) for v in values):
            merged[key] = [sum(column) for column in zip(*values, strict=True)]
        elif all(isinstance(v, dict) for v in values):
            merged[key] = merge_reports(values)
        elif all(v == values[0] for v in values):
            merged[key] = values[0]
        else:
            merged[key] = values
    return merged


def merge_outputs(folders: list[str], out_uri: str, tables: Iterable[str], report: str = "report.json") -> dict:
    """Merge the output folders of one stage run per shard into one folder of the same layout:
    each named table concatenated, the reports combined by :func:`merge_reports` (with
    ``shards`` = the number of folders). Returns the merged report."""
    if not folders:
        raise InputError(f"{out_uri}: no shard output to merge")
    rows = {}
    for name in tables:
        rows[name] = merge_tables([storage.join(f, name) for f in folders], storage.join(out_uri, name))
    reports = [
        json.loads(storage.read_text(storage.join(f, report)))
        for f in folders
        if storage.exists(storage.join(f, report))
    ]
    merged = merge_reports(reports)
    merged["merged_shards"] = len(folders)
    merged["merged_rows"] = rows
    storage.write_text(storage.join(out_uri, report), json.dumps(merged, indent=1, default=str))
    return merged
