"""What a configured teacher stage is: its kind and the item text it reads.

A stage of kind ``ordinal_cross_encoder`` reads the item text of its ``item_fields``;
one of kind ``ordinal_features``, and a cross-encoder stacked on one (``stack_on``),
read the JSON item record; a ``served`` stage is whatever model the Triton repository
holds under its name.
"""

from __future__ import annotations

import pyarrow as pa

from unisup.config import TeacherStageConfig
from unisup.data.catalog import item_records, item_texts

FEATURES_KIND = "ordinal_features"
KINDS = ("ordinal_cross_encoder", FEATURES_KIND, "served")


def reads_records(stage: TeacherStageConfig) -> bool:
    """Whether the stage reads JSON item records (feature stages and stacked cross-encoders)."""
    return stage.kind == FEATURES_KIND or bool(stage.stack_on)


def stage_item_texts(catalog: pa.Table, stage: TeacherStageConfig, item_ids: list[str] | None = None) -> dict[str, str]:
    """{item_id: what the stage reads} for the catalog rows (or only ``item_ids``): the item text,
    or the JSON item record for a stage that :func:`reads_records`."""
    if item_ids is not None:
        import pyarrow.compute as pc

        catalog = catalog.filter(
            pc.is_in(catalog["product_id"], value_set=pa.array(sorted(set(item_ids)), pa.string()))
        )
    if reads_records(stage):
        texts = item_records(catalog, attributes=stage.attributes)
    else:
        texts = item_texts(catalog, fields=tuple(stage.item_fields), attributes=stage.attributes)
    return dict(zip(catalog["product_id"].to_pylist(), texts))
