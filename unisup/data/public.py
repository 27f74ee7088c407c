"""Public e-commerce relevance datasets mapped into the catalog and judgments schemas.

- WANDS (Wayfair): ``product.csv``, ``query.csv``, ``label.csv``, tab-separated.
  Labels Exact / Partial / Irrelevant map to grades 3 / 1 / 0.
- Amazon ESCI (Shopping Queries): ``shopping_queries_dataset_examples.parquet`` and
  ``shopping_queries_dataset_products.parquet``. Labels E / S / C / I map to 3 / 2 / 1 / 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unisup.data.tables import parse_csv
from unisup.schemas import DataValidationError, RuleContext, validate

WANDS_GRADES = {"Exact": 3, "Partial": 1, "Irrelevant": 0}
ESCI_GRADES = {"E": 3, "S": 2, "C": 1, "I": 0}
ESCI_FILES = ("shopping_queries_dataset_examples.parquet", "shopping_queries_dataset_products.parquet")
WANDS_FILES = ("product.csv", "query.csv", "label.csv")


def _require(table: pa.Table, columns: list[str], artifact: str, source: str) -> None:
    for col in columns:
        if col not in table.column_names:
            raise DataValidationError(
                artifact, source, f"required column is missing (found: {', '.join(table.column_names)})", column=col
            )


def _map_labels(
    values: list[str | None], mapping: dict[str, int], artifact: str, source: str, column: str
) -> list[int]:
    bad = [i for i, v in enumerate(values) if v not in mapping]
    if bad:
        raise DataValidationError(
            artifact,
            source,
            f"unknown label(s) {sorted({str(values[i]) for i in bad})[:5]}; expected {list(mapping)}",
            column=column,
            rows=[i + 1 for i in bad],
            rule="label_known",
        )
    return [mapping[v] for v in values]


def _features_json(raw: str | None) -> str | None:
    if not raw:
        return None
    pairs = {}
    for part in raw.split("|"):
        key, sep, value = part.partition(":")
        if sep and key.strip():
            pairs[key.strip().replace(" ", "_").lower()] = value.strip()
    return json.dumps(pairs) if pairs else None


def load_wands(folder: str | Path, num_grades: int = 4) -> tuple[pa.Table, pa.Table]:
    """Catalog and judgments (validated, strict) from a WANDS ``dataset/`` folder."""
    folder = Path(folder)
    raw = {}
    for name in WANDS_FILES:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"WANDS layout: {path} is missing (expected {', '.join(WANDS_FILES)})")
        raw[name] = parse_csv(
            path.read_bytes(), "catalog" if name == "product.csv" else "judgments", str(path), delimiter="\t"
        )
    products, queries, labels = raw["product.csv"], raw["query.csv"], raw["label.csv"]
    _require(products, ["product_id", "product_name"], "catalog", str(folder / "product.csv"))
    _require(queries, ["query_id", "query"], "judgments", str(folder / "query.csv"))
    _require(labels, ["query_id", "product_id", "label"], "judgments", str(folder / "label.csv"))
    optional = {
        c: products[c] if c in products.column_names else pa.nulls(products.num_rows, pa.string())
        for c in ("product_description", "category hierarchy", "product_features", "product_class")
    }
    catalog = pa.table(
        {
            "product_id": products["product_id"],
            "title": products["product_name"],
            "name": products["product_name"],
            "description": optional["product_description"],
            "category": pc.coalesce(optional["category hierarchy"], optional["product_class"]),
            "attributes": pa.array([_features_json(v) for v in optional["product_features"].to_pylist()], pa.string()),
        }
    )
    catalog = validate(catalog, "catalog", str(folder / "product.csv")).accepted
    query_text = dict(zip(queries["query_id"].to_pylist(), queries["query"].to_pylist()))
    query_ids = labels["query_id"].to_pylist()
    missing = [i for i, q in enumerate(query_ids) if q not in query_text]
    if missing:
        raise DataValidationError(
            "judgments",
            str(folder / "label.csv"),
            "query_id not in query.csv",
            column="query_id",
            rows=[i + 1 for i in missing],
        )
    judgments = pa.table(
        {
            "query": [query_text[q] for q in query_ids],
            "product_id": labels["product_id"],
            "rating": pa.array(
                _map_labels(labels["label"].to_pylist(), WANDS_GRADES, "judgments", str(folder / "label.csv"), "label"),
                pa.int8(),
            ),
        }
    )
    ctx = RuleContext(num_grades=num_grades, known_items=frozenset(catalog["product_id"].to_pylist()))
    return catalog, validate(judgments, "judgments", str(folder / "label.csv"), ctx).accepted


def load_esci(
    folder: str | Path, locale: str = "us", small_version: bool = True, num_grades: int = 4
) -> tuple[pa.Table, pa.Table]:
    """Catalog and judgments (validated, strict) from the ESCI parquet files of one locale."""
    folder = Path(folder)
    examples_path, products_path = (folder / n for n in ESCI_FILES)
    for path in (examples_path, products_path):
        if not path.exists():
            raise FileNotFoundError(f"ESCI layout: {path} is missing (expected {', '.join(ESCI_FILES)})")
    examples = pq.read_table(examples_path)
    products = pq.read_table(products_path)
    _require(examples, ["query", "product_id", "product_locale", "esci_label"], "judgments", str(examples_path))
    _require(products, ["product_id", "product_locale", "product_title"], "catalog", str(products_path))
    examples = examples.filter(pc.equal(examples["product_locale"], locale))
    if small_version and "small_version" in examples.column_names:
        examples = examples.filter(pc.equal(examples["small_version"].cast(pa.int8()), 1))
    products = products.filter(pc.equal(products["product_locale"], locale))
    needed = pc.is_in(products["product_id"], value_set=pc.unique(examples["product_id"]))
    products = products.filter(needed)

    def col(name: str) -> pa.ChunkedArray:
        return (
            products[name]
            if name in products.column_names
            else pa.chunked_array([pa.nulls(products.num_rows, pa.string())])
        )

    catalog = pa.table(
        {
            "product_id": products["product_id"],
            "title": products["product_title"],
            "brand": col("product_brand"),
            "description": pc.coalesce(col("product_description"), col("product_bullet_point")),
            "attributes": pa.array(
                [json.dumps({"color": c}) if c else None for c in col("product_color").to_pylist()], pa.string()
            ),
        }
    )
    catalog = validate(catalog, "catalog", str(products_path)).accepted
    judgments = pa.table(
        {
            "query": examples["query"],
            "product_id": examples["product_id"],
            "rating": pa.array(
                _map_labels(
                    examples["esci_label"].to_pylist(), ESCI_GRADES, "judgments", str(examples_path), "esci_label"
                ),
                pa.int8(),
            ),
        }
    )
    ctx = RuleContext(num_grades=num_grades, known_items=frozenset(catalog["product_id"].to_pylist()))
    return catalog, validate(judgments, "judgments", str(examples_path), ctx).accepted
