"""Item texts: how a catalog row becomes the text the encoders and BM25 read."""

from __future__ import annotations

import json

import pyarrow as pa

DEFAULT_FIELDS = ("title", "brand", "description")


def item_texts(catalog: pa.Table, fields: tuple[str, ...] = DEFAULT_FIELDS, attributes: int = 0) -> list[str]:
    """One text per catalog row: the given fields joined, then up to ``attributes``
    key: value pairs from the ``attributes`` JSON. Missing fields are skipped."""
    columns = {f: catalog[f].to_pylist() for f in fields if f in catalog.column_names}
    attrs = catalog["attributes"].to_pylist() if attributes and "attributes" in catalog.column_names else None
    texts = []
    for i in range(catalog.num_rows):
        parts = []
        for f in fields:
            value = columns.get(f, [None] * catalog.num_rows)[i]
            if value and (f != "brand" or value.lower() not in (parts[0].lower() if parts else "")):
                parts.append(str(value))
        if attrs and attrs[i]:
            parts.append(_attribute_text(attrs[i], attributes))
        texts.append(" | ".join(p for p in parts if p))
    return texts


def _attribute_text(raw: str, limit: int) -> str:
    try:
        values = json.loads(raw)
    except json.JSONDecodeError:
        return ""
    pairs = [
        f"{k.replace('_', ' ')}: {v}"
        for k, v in values.items()
        if isinstance(v, (str, int, float)) and not isinstance(v, bool)
    ]
    return "; ".join(pairs[:limit])
