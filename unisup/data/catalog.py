"""Item texts and item records: how a catalog row becomes what the encoders, BM25 and teachers read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pyarrow as pa

DEFAULT_FIELDS = ("title", "brand", "description")
RECORD_FIELDS = ("title", "brand", "description")
TYPE_ATTRIBUTE = "product_type"


def row_text(row: Mapping[str, object], fields: Sequence[str] = DEFAULT_FIELDS, attributes: int = 0) -> str:
    """The text of one item: the given fields joined by `` | `` (a brand already in the first
    field is skipped), then up to ``attributes`` key: value pairs of its ``attributes``, which
    may be the catalog's JSON string or a dict."""
    parts: list[str] = []
    for f in fields:
        value = row.get(f)
        if value and (f != "brand" or str(value).lower() not in (parts[0].lower() if parts else "")):
            parts.append(str(value))
    raw = row.get("attributes") if attributes else None
    if raw:
        parts.append(_attribute_text(raw, attributes))
    return " | ".join(p for p in parts if p)


def item_texts(catalog: pa.Table, fields: tuple[str, ...] = DEFAULT_FIELDS, attributes: int = 0) -> list[str]:
    """One text per catalog row (see :func:`row_text`). Missing fields are skipped."""
    return [row_text(row, fields, attributes) for row in _rows(catalog, fields, attributes)]


def item_records(catalog: pa.Table, attributes: int = 0) -> list[str]:
    """One JSON record per catalog row: title, brand, description, the product type (the
    ``product_type`` attribute, when there is one) and up to ``attributes`` key: value pairs.
    Feature-based teachers read items as records, so that each field is matched on its own."""
    out = []
    for row in _rows(catalog, RECORD_FIELDS, 1):
        parsed = _attributes(row.get("attributes"))
        kept = dict(_text_pairs(parsed)[:attributes]) if attributes else {}
        record = {f: row.get(f) or "" for f in RECORD_FIELDS}
        record["product_type"] = str(parsed.get(TYPE_ATTRIBUTE) or "")
        record["attributes"] = kept
        out.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
    return out


def parse_record(text: str) -> dict:
    """An item record written by :func:`item_records`; a clear error for anything else."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"item is not a JSON item record ({err.msg}): {text[:80]!r}") from None
    if not isinstance(record, dict) or "title" not in record:
        raise ValueError(f"item record needs at least a title, got {text[:80]!r}")
    return record


def _rows(catalog: pa.Table, fields: Sequence[str], attributes: int) -> list[dict]:
    names = [f for f in fields if f in catalog.column_names]
    if attributes and "attributes" in catalog.column_names:
        names.append("attributes")
    return catalog.select(names).to_pylist()


def _attributes(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return values if isinstance(values, dict) else {}


def _text_pairs(values: dict) -> list[tuple[str, object]]:
    return [(k, v) for k, v in values.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]


def _attribute_text(raw, limit: int) -> str:
    pairs = [f"{k.replace('_', ' ')}: {v}" for k, v in _text_pairs(_attributes(raw))]
    return "; ".join(pairs[:limit])
