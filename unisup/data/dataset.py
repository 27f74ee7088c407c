"""The dataset a run works on: catalog, human judgments and the query split."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unisup import storage
from unisup.config import ConfigError, DataConfig
from unisup.data.tables import read_artifact
from unisup.errors import InputError
from unisup.schemas import RuleContext, Validated

SPLITS = ("train", "validation", "test")
MAX_QUERIES_IN_MESSAGE = 3


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
        raise ConfigError(f"data.split_fractions must be three positive numbers summing to 1, got {fractions}")
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
    """Read a split file: three disjoint lists of query strings, or an InputError naming the file."""
    try:
        payload = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as err:
        raise InputError(f"{uri}: the split is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{uri}: the split must be a JSON object with keys {', '.join(SPLITS)}")
    missing = [k for k in SPLITS if k not in payload]
    if missing:
        raise InputError(f"{uri}: split file lacks {', '.join(missing)}")
    for name in SPLITS:
        queries = payload[name]
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise InputError(f"{uri}: '{name}' must be a list of query strings, got {type(queries).__name__}")
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            shared = sorted(set(payload[first]) & set(payload[second]))
            if shared:
                raise InputError(
                    f"{uri}: {len(shared)} queries are in both '{first}' and '{second}' "
                    f"(leakage), e.g. {', '.join(repr(q) for q in shared[:MAX_QUERIES_IN_MESSAGE])}"
                )
    return {k: list(payload[k]) for k in SPLITS}


def check_split_queries(split: dict[str, list[str]], judged: set[str], uri: str) -> None:
    """Every query of the split must be judged: an unknown one is a typo or another dataset's split."""
    unknown = sorted({q for queries in split.values() for q in queries} - judged)
    if unknown:
        raise InputError(
            f"{uri}: {len(unknown)} split queries have no judgments, "
            f"e.g. {', '.join(repr(q) for q in unknown[:MAX_QUERIES_IN_MESSAGE])}"
        )


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load catalog, judgments and split as configured; the split is made if absent."""
    catalog = load_catalog(cfg.catalog_uri).accepted
    judgments = load_judgments(cfg.judgments_uri, catalog, cfg.num_grades).accepted
    if storage.exists(cfg.split_uri):
        split = read_split(cfg.split_uri)
        check_split_queries(split, set(judgments["query"].to_pylist()), cfg.split_uri)
    else:
        split = make_split(judgments["query"].to_pylist(), cfg.split_seed, cfg.split_fractions)
        write_split(split, cfg.split_uri, cfg.split_seed, cfg.split_fractions)
    return Dataset(catalog, judgments, split)
