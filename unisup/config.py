"""Typed configuration, loaded from YAML with ``yaml.safe_load``.

Every section is a dataclass whose fields carry a default and help text
(``field(metadata={"help": ...})``). :func:`load_config` reads a profile
(``local``, ``cluster``) or a YAML file, applies ``section.key=value`` overrides, and
raises :class:`ConfigError` naming the bad key and saying why.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("local", "cluster")


class ConfigError(ValueError):
    """A configuration key is unknown, missing or of the wrong type."""


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a default (copied when mutable) and help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    catalog_uri: str = _f("data/sample/products.parquet", "catalog (Parquet or CSV) in the catalog schema")
    judgments_uri: str = _f("data/sample/judgments.csv", "human judgments (CSV or Parquet)")
    split_uri: str = _f("data/sample/split.json", "train/validation/test query split (JSON)")
    num_grades: int = _f(4, "K, the number of relevance grades (0 .. K-1)")
    relevance_threshold: int = _f(2, "r0: grades >= r0 count as relevant")
    split_seed: int = _f(13, "seed of the query split")
    split_fractions: list[float] = _f([0.5, 0.2, 0.3], "train, validation, test fractions of queries")


@dataclass
class ChannelsConfig:
    bm25_k1: float = _f(1.5, "BM25 k1")
    bm25_b: float = _f(0.75, "BM25 b")
    dense_model: str = _f("", "encoder folder for the dense channel; empty = the packaged MiniLM")
    dense_batch_size: int = _f(64, "texts per encoder batch")
    dense_max_length: int = _f(64, "max tokens per text for the dense channel")
    cache_dir: str = _f(".cache/embeddings", "embedding cache, keyed by a hash of content and model")
    top_k: int = _f(100, "items returned per query by each channel")
    rrf_k: int = _f(60, "k of reciprocal-rank fusion, 1 / (k + rank)")


@dataclass
class Config:
    """The whole configuration: one section per concern."""

    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "inputs and grade scale"})
    channels: ChannelsConfig = field(default_factory=ChannelsConfig, metadata={"help": "retrieval channels"})


# ---------------------------------------------------------------- loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be null")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp in (float, str) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"{full}: unknown key; {cls.__name__} has: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix or cls.__name__}: missing required key(s): {', '.join(missing)}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as plain data (for YAML, JSON and artifact metadata)."""
    return dataclasses.asdict(config)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, _, raw = item.partition("=")
    return key.strip().split("."), yaml.safe_load(raw)


def _profile_text(name: str) -> str:
    return resources.files("unisup").joinpath("profiles", f"{name}.yaml").read_text()


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a profile name (``local``/``cluster``) or a YAML file, then apply overrides.

    ``overrides`` are ``section.key=value`` strings, the value parsed as YAML.
    """
    if source is None or str(source) in PROFILES:
        name = str(source or "local")
        text, origin = _profile_text(name), f"profile {name}"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path} (profiles: {', '.join(PROFILES)})")
        text, origin = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections at the top level")
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    try:
        return from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf key, for ``unisup config --help``-style listings."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(hints[f.name]):
            rows.extend(describe(hints[f.name], key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
