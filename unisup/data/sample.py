"""The dataset a run works on: catalog, human judgments and the query split."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unisup import storage
from unisup.config import DataConfig
from unisup.data.tables import read_artifact
from unisup.schemas import RuleContext, Validated

SPLITS = ("train", "validation", "test")


@dataclass
class Dataset:
    """A validated catalog, validated judgments and the train/validation/test query split."""

    catalog: pa.Table
    judgments: pa.Table
    split: dict[str, list[str]]

    def judgments_for(self, split: str) -> pa.Table:
        """The judgments of the queries in one split."""
        queries = pa.array(self.split[split], type=pa.string())
        return self.judgments.filter(pc.is_in(self.judgments["query"], value_set=queries))

    def qrels(self, split: str) -> dict[str, dict[str, int]]:
        """{query: {product_id: grade}} for one split."""
        out: dict[str, dict[str, int]] = {}
        for row in self.judgments_for(split).select(["query", "product_id", "rating"]).to_pylist():
            out.setdefault(row["query"], {})[row["product_id"]] = int(row["rating"])
        return out


def load_catalog(uri: str) -> Validated:
    """Read and validate a catalog file (strict: any bad row raises)."""
    return read_artifact(uri, "catalog")


def load_judgments(uri: str, catalog: pa.Table, num_grades: int) -> Validated:
    """Read and validate judgments against the catalog's ids and the grade scale."""
    context = RuleContext(num_grades=num_grades, known_items=frozenset(catalog["product_id"].to_pylist()))
    return read_artifact(uri, "judgments", context)


def make_split(queries: list[str], seed: int, fractions: list[float]) -> dict[str, list[str]]:
    """Deterministic seeded split of queries into train / validation / test (by query)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    unique = sorted(set(queries))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = round(fractions[0] * len(unique))
    n_val = round(fractions[1] * len(unique))
    shuffled = [unique[i] for i in order]
    return {
        "train": sorted(shuffled[:n_train]),
        "validation": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def write_split(split: dict[str, list[str]], uri: str, seed: int, fractions: list[float]) -> None:
    payload = {"seed": seed, "fractions": fractions, **{k: split[k] for k in SPLITS}}
    storage.write_text(uri, json.dumps(payload, indent=1) + "\n")


def read_split(uri: str) -> dict[str, list[str]]:
    payload = json.loads(storage.read_text(uri))
    missing = [k for k in SPLITS if k not in payload]
    if missing:
        raise ValueError(f"{uri}: split file lacks {', '.join(missing)}")
    return {k: list(payload[k]) for k in SPLITS}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load catalog, judgments and split as configured; the split is made if absent."""
    catalog = load_catalog(cfg.catalog_uri).accepted
    judgments = load_judgments(cfg.judgments_uri, catalog, cfg.num_grades).accepted
    if storage.exists(cfg.split_uri):
        split = read_split(cfg.split_uri)
    else:
        split = make_split(judgments["query"].to_pylist(), cfg.split_seed, cfg.split_fractions)
        write_split(split, cfg.split_uri, cfg.split_seed, cfg.split_fractions)
    return Dataset(catalog, judgments, split)
