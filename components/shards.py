"""Fan a stage out over shards: split a table by key, hand one shard to a task, merge outputs.

Logic in :mod:`unisup.sharding`; used with ``dsl.ParallelFor`` over ``split_shards``'s
returned shard indices and ``dsl.Collected`` of the per-shard outputs.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components._image import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def split_shards(table: Input[Dataset], key_column: str, num_shards: int, shards: Output[Dataset]) -> list[int]:
    """Split ``table`` (a Parquet file or folder) into ``num_shards`` by the hash of
    ``key_column``; returns the shard indices to loop over."""
    from unisup.sharding import split_table

    manifest = split_table(table.path, key_column, num_shards, shards.path)
    shards.metadata.update(
        {
            "key_column": key_column,
            "num_shards": num_shards,
            "rows_in": manifest["rows_in"],
            "rows_per_shard": [s["rows"] for s in manifest["shards"]],
        }
    )
    return list(range(num_shards))


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def pick_shard(shards: Input[Dataset], index: int, shard: Output[Dataset]):
    """One shard of a split, as its own Parquet artifact."""
    from unisup.sharding import copy_shard

    rows = copy_shard(shards.path, index, shard.path)
    shard.metadata.update({"index": index, "rows": rows})


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def merge_shards(
    parts: Input[list[Artifact]],
    tables: list[str],
    main_table: str,
    merged: Output[Artifact],
    merged_table: Output[Dataset],
):
    """Merge the per-shard output folders of one stage: the named ``tables`` concatenated,
    the ``report.json`` files summed, into ``merged``; ``merged_table`` is its
    ``main_table`` as one Parquet file for the next stage."""
    from unisup import storage
    from unisup.sharding import merge_outputs

    report = merge_outputs([part.path for part in parts], merged.path, tables)
    storage.write_bytes(merged_table.path, storage.read_bytes(storage.join(merged.path, main_table)))
    merged.metadata.update({"tables": tables, "shards": len(parts), "rows": report["merged_rows"]})
    merged_table.metadata.update({"table": main_table, "shards": len(parts), "rows": report["merged_rows"][main_table]})
