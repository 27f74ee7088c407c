"""Log extraction: raw request logs -> per (query, item) engagement, with a quarantine.

:func:`extract_logs` reads a date-partitioned raw-log dataset
(``<root>/date=YYYY-MM-DD/*.parquet``, local or ``gs://``) for a date window on the
engine ``cfg.engine`` names (:mod:`unisup.engines`): DuckDB (out-of-core, bounded by
``duckdb_memory_limit``) or Spark, the same SQL; the log is never loaded into Python. It:

1. **validates** every row with the ``raw_logs`` row rules of :mod:`unisup.schemas`,
   written in SQL (:func:`quarantine_reason_sql`, same order, same first-reason-wins
   semantics); bad rows go to the quarantine table with their reason, file and row;
2. **filters bots**: users whose user agent matches a pattern, who issue too many
   requests in a day, or whose click-through rate is implausibly high;
3. **estimates examination propensities** per slot by intervention harvesting (the
   same (query, item) shown at slot 1 and at slot p across requests), or takes them
   from the config;
4. **aggregates** per (query, item): impressions, clicks, conversions, revenue (price
   of converted items), under-impressions, position-debiased CTR (clicks / sum of the
   propensities of its impressions; 0 without impressions), Beta-smoothed debiased CTR
   and conversion rate, the best rank in each channel and the number of channels.

Rows in = rows accepted + rows quarantined is checked (and accepted = used + bot
filtered); the report (strict JSON: never NaN or Infinity) says so with counts by reason.

No input becomes SQL text: paths, the window and the settings reach the engine as bound
(named) parameters, connection options or registered tables, and the settings are checked before any work
(:func:`check_settings`: a :class:`~unisup.config.ConfigError` naming the key). The files:

* one that is not readable Parquet (empty, truncated, a text column that is not UTF-8),
  lacks a required column, or holds a column of a type the schema's cannot be read from
  (integer epochs as ``timestamp``: seconds or milliseconds?) is a
  :class:`~unisup.schemas.DataValidationError` naming the file and the column;
* each file's values are converted from its own types; a value that does not convert
  (position 70000 or "abc" for an int16, an unparsable timestamp text, bytes that are not
  UTF-8 in a binary column) quarantines its row, e.g. "position is not a whole number
  from -32768 to 32767"; the quarantine holds that value as null, and ``source_file`` and
  ``source_row`` locate it;
* queries are not normalised: a query holding a control character (NUL, escape, newline,
  tab, ...) or a line break is quarantined, as is a row whose price is negative, NaN or
  infinite.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unisup import storage
from unisup.config import ConfigError, ExtractionConfig, to_dict
from unisup.engines import check_engine, engine_session, open_engine
from unisup.schemas import (
    CATALOG,
    ENGAGEMENT,
    QUARANTINE_REASON,
    QUERY_UNPRINTABLE,
    RAW_LOGS,
    SOURCE_ROW,
    DataValidationError,
    validate,
)

SOURCE_FILE = "source_file"
TYPE_ERROR = "type_error"  # in ``src``: why a value of the row does not convert to the schema's type, else NULL
_DATE_PART = re.compile(r"(?:^|/)date=([^/]*)/")
_CHANNEL = re.compile(r"[a-z][a-z0-9_]*")
_READER_COLUMNS = ("filename", "file_row_number")  # DuckDB's reader adds them: a file may not hold them
_WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())  # pyarrow's utf8_trim_whitespace set
_MEMORY = re.compile(r"\s*(\d+(\.\d+)?)\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", re.IGNORECASE)


# ---------------------------------------------------------------- settings


def _at_least(low: float):
    return lambda v: math.isfinite(v) and v >= low, f"a number of at least {low}"


def _between(low: float, high: float):
    return lambda v: math.isfinite(v) and low <= v <= high, f"a number from {low} to {high}"


_SETTINGS = {
    "duckdb_threads": _at_least(1),
    "max_position": _between(1, 32767),
    "holdout_days": _at_least(0),
    "bot_max_requests_per_day": _at_least(0),
    "bot_max_ctr": _at_least(0),
    "bot_min_impressions": _at_least(0),
    "min_propensity": (lambda v: math.isfinite(v) and 0 < v <= 1, "a number above 0 and at most 1"),
    "min_harvest_pairs": _at_least(0),
    "ctr_prior_mean": _between(0, 1),
    "cvr_prior_mean": _between(0, 1),
    "ctr_prior_strength": (lambda v: math.isfinite(v) and v > 0, "a number above 0"),
    "cvr_prior_strength": (lambda v: math.isfinite(v) and v > 0, "a number above 0"),
}


def check_settings(cfg: ExtractionConfig) -> None:
    """Every extraction setting usable, or a ConfigError naming the first bad key."""
    for key, (valid, expected) in _SETTINGS.items():
        value = getattr(cfg, key)
        if not valid(value):
            raise ConfigError(f"extraction.{key}={value!r}: expected {expected}")
    for index, value in enumerate(cfg.propensities):
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ConfigError(f"extraction.propensities[{index}]={value!r}: expected a number above 0 and at most 1")
    size = _MEMORY.fullmatch(cfg.duckdb_memory_limit)
    if not size or float(size.group(1)) <= 0:
        raise ConfigError(
            f"extraction.duckdb_memory_limit={cfg.duckdb_memory_limit!r}: expected a size such as 256MB or 2GiB "
            "(a number above 0 and one of KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    try:
        re.compile(cfg.bot_user_agent_pattern)
    except re.error as err:
        raise ConfigError(
            f"extraction.bot_user_agent_pattern={cfg.bot_user_agent_pattern!r}: not a regular expression ({err})"
        ) from None
    check_engine(cfg)
    _given_window(cfg, None, None)


def _day(value: str, key: str) -> str:
    """``value`` as YYYY-MM-DD, or a ConfigError naming ``key``."""
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigError(f"{key}={value!r}: not a date YYYY-MM-DD") from None


def _given_window(cfg: ExtractionConfig, start_date: str | None, end_date: str | None) -> tuple[str | None, str | None]:
    """The window's first and last days where given (``start_date``/``end_date``, else the config's), checked."""
    days = []
    for argument, name in ((start_date, "start_date"), (end_date, "end_date")):
        value, key = (argument, name) if argument else (getattr(cfg, name), f"extraction.{name}")
        days.append(_day(value, key) if value else None)
    first, last = days
    if first and last and last < first:
        raise ConfigError(f"the window ends ({last}) before it starts ({first}): check its start_date and end_date")
    return first, last


def _window(dates: list[str], given: tuple[str | None, str | None]) -> tuple[str, str]:
    """The window: the given days, else the first and last partitions."""
    first, last = given[0] or dates[0], given[1] or dates[-1]
    if last < first:
        raise ConfigError(
            f"the window ends ({last}) before it starts ({first}): the logs have partitions {dates[0]} .. {dates[-1]}"
        )
    return first, last


# ---------------------------------------------------------------- the files


def partitions(logs_uri: str) -> list[tuple[str, str]]:
    """(date, uri) of every Parquet file under ``logs_uri``, sorted; each must sit in a
    ``date=YYYY-MM-DD`` folder."""
    root = str(logs_uri).rstrip("/")
    out = []
    for uri in storage.list_prefix(logs_uri):
        if not uri.endswith(".parquet"):
            continue
        match = _DATE_PART.search(uri[len(root) :] if uri.startswith(root) else uri)
        if not match:
            raise DataValidationError("raw_logs", uri, "log file is not inside a date=YYYY-MM-DD partition folder")
        try:
            date = dt.date.fromisoformat(match.group(1))
        except ValueError:
            raise DataValidationError(
                "raw_logs", uri, f"partition folder date={match.group(1)} is not a date"
            ) from None
        out.append((date.isoformat(), uri))
    return sorted(out)


def _parquet_footer(path: str) -> tuple[pa.Schema, int]:
    """The Arrow schema and row count of a Parquet file, local or gs:// (only its footer is read)."""
    if storage.is_gcs(path):
        import pyarrow.fs

        system, inside = pyarrow.fs.FileSystem.from_uri(path)
        with system.open_input_file(inside) as handle, pq.ParquetFile(handle) as file:
            return file.schema_arrow, file.metadata.num_rows
    with pq.ParquetFile(path) as file:
        return file.schema_arrow, file.metadata.num_rows


@contextmanager
def staged(uris: list[str], engine: str = "duckdb") -> Iterator[list[str]]:
    """Paths of the files for ``engine``: themselves when local or when Spark reads them (it
    reads gs:// itself), else copies in a temporary folder."""
    if engine == "spark" or not any(storage.is_gcs(u) for u in uris):
        yield uris
        return
    with tempfile.TemporaryDirectory(prefix="unisup-logs-") as tmp:
        yield [str(storage.download_file(uri, Path(tmp) / f"{index:06d}.parquet")) for index, uri in enumerate(uris)]


def known_items(catalog_uri: str) -> pa.Table:
    """The catalog's product ids, validated (strictly) as by ``load_catalog``; of a Parquet
    catalog only the columns the schema requires or its rules read are loaded."""
    from unisup.data.dataset import load_catalog

    if str(catalog_uri).endswith(".parquet"):
        with storage.local_copy(catalog_uri) as path, contextlib.suppress(pa.ArrowInvalid):  # load_catalog says why
            with pq.ParquetFile(path) as file:
                needed = {c.name for c in CATALOG.columns if c.required} | {r.column for r in CATALOG.rules}
                table = file.read(columns=[name for name in file.schema_arrow.names if name in needed])
            return validate(table, "catalog", catalog_uri).accepted.select(["product_id"])
    return load_catalog(catalog_uri).accepted.select(["product_id"])


@dataclass(frozen=True)
class LogFile:
    """One raw-log file: its local path, the uri it came from, its place in the rows' order,
    its Arrow schema and its rows."""

    path: str
    source: str
    index: int
    schema: pa.Schema
    rows: int


def read_log_files(paths: list[str], sources: list[str], indexes: Iterable[int]) -> list[LogFile]:
    """The footers of the log files, each checked by :func:`check_columns`; a file that is
    not readable Parquet is an error naming it."""
    files = []
    for path, source, index in zip(paths, sources, indexes, strict=True):
        try:
            schema, rows = _parquet_footer(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataValidationError("raw_logs", source, f"not a readable Parquet file ({err})") from None
        check_columns(schema, source)
        files.append(LogFile(path, source, index, schema, rows))
    return files


def channels_of(files: Iterable[LogFile]) -> list[str]:
    """The channel names of the files' ``rank_<channel>`` columns, sorted."""
    names = {name for file in files for name in file.schema.names}
    return sorted(name[len("rank_") :] for name in RAW_LOGS.dynamic_names(names))


@dataclass(frozen=True)
class _Target:
    """A schema type as DuckDB holds it, what its values are (for quarantine reasons), and
    the kinds of file types its values are read from (a column of nulls is read as any)."""

    sql: str
    noun: str
    kinds: frozenset[str]


_TARGETS = {
    pa.string(): _Target("VARCHAR", "valid UTF-8 text", frozenset({"string", "binary", "integer"})),
    pa.int16(): _Target("SMALLINT", "a whole number from -32768 to 32767", frozenset({"integer", "float", "string"})),
    pa.int32(): _Target(
        "INTEGER", "a whole number from -2147483648 to 2147483647", frozenset({"integer", "float", "string"})
    ),
    pa.bool_(): _Target("BOOLEAN", "true or false", frozenset({"bool", "integer", "string"})),
    pa.float64(): _Target("DOUBLE", "a number", frozenset({"float", "integer", "string"})),
    pa.timestamp("us", tz="UTC"): _Target("TIMESTAMPTZ", "a timestamp", frozenset({"timestamp", "string"})),
}


def _kind(dtype: pa.DataType) -> str | None:
    """The kind of a file's column type (a dictionary's by its values), None for others (lists, structs ...)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    kinds = (
        ("null", pa.types.is_null),
        ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)),
        ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)),
        ("integer", pa.types.is_integer),
        ("float", lambda t: pa.types.is_floating(t) or pa.types.is_decimal(t)),
        ("bool", pa.types.is_boolean),
        ("timestamp", lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t)),
    )
    return next((kind for kind, test in kinds if test(dtype)), None)


def _schema_types(names: Iterable[str]) -> dict[str, pa.DataType]:
    """The schema type of every raw-log column among ``names`` (its ``rank_<channel>`` included)."""
    types = {c.name: c.type for c in RAW_LOGS.columns}
    types |= {name: RAW_LOGS.dynamic_columns["rank_"] for name in RAW_LOGS.dynamic_names(names)}
    return {name: types[name] for name in names if name in types}


def check_columns(schema: pa.Schema, source: str) -> None:
    """A log file's columns: names unique (letter case aside) and none that DuckDB's reader
    adds, every required column, channel names of lowercase letters, digits and _, and types
    the schema's can be read from; else an error naming the file and the column."""
    folded = [name.lower() for name in schema.names]
    for name in schema.names:
        if folded.count(name.lower()) > 1:
            raise DataValidationError("raw_logs", source, "two columns have this name, letter case aside", column=name)
        if name in _READER_COLUMNS:
            raise DataValidationError("raw_logs", source, "a name the Parquet reader reserves; rename it", column=name)
    for column in RAW_LOGS.columns:
        if column.required and column.name not in schema.names:
            raise DataValidationError(
                "raw_logs", source, f"required column is missing (found: {', '.join(schema.names)})", column=column.name
            )
    for name, dtype in _schema_types(schema.names).items():
        if name.startswith("rank_") and not _CHANNEL.fullmatch(name[len("rank_") :]):
            raise DataValidationError(
                "raw_logs", source, "a channel's name holds only lowercase letters, digits and _", column=name
            )
        found = schema.field(name).type
        readable = _TARGETS[dtype].kinds | {"null"}
        if _kind(found) not in readable:
            raise DataValidationError(
                "raw_logs",
                source,
                f"values of type {found} cannot be read as {dtype} (readable: {', '.join(sorted(readable))})",
                column=name,
            )


def _converted(name: str, found: pa.DataType, dtype: pa.DataType) -> tuple[str, str | None]:
    """SQL of the file's column ``name`` (of type ``found``) as the schema's ``dtype``, and of
    its value before the conversion where a value may not convert (else None): a row whose
    value is null after it and not before does not convert."""
    target, kind, raw = _TARGETS[dtype], _kind(found), f'r."{name}"'
    if kind == "null":
        return f"CAST(NULL AS {target.sql})", None
    if found == dtype:
        return raw, None
    if kind == "binary":
        return f"TRY(decode({raw}))", raw
    if kind == "string" and target.sql != "VARCHAR":
        raw = f"nullif(trim({raw}), '')"  # blank text is a missing value
    if target.sql in ("SMALLINT", "INTEGER") and kind != "integer":
        number = f"TRY_CAST({raw} AS DOUBLE)" if kind == "string" else f"CAST({raw} AS DOUBLE)"
        return f"TRY_CAST(CASE WHEN {number} % 1 = 0 THEN {number} END AS {target.sql})", raw  # no rounding
    if target.sql == "BOOLEAN" and kind == "integer":
        return f"CASE WHEN {raw} IN (0, 1) THEN {raw} = 1 END", raw
    if target.sql == "BOOLEAN" and kind == "string":  # the words both engines read alike
        words = f"lower({raw})"
        yes, no = "('true', 't', 'yes', 'y', '1')", "('false', 'f', 'no', 'n', '0')"
        return f"CASE WHEN {words} IN {yes} THEN true WHEN {words} IN {no} THEN false END", raw
    if (kind == "string" and target.sql != "VARCHAR") or target.sql in ("SMALLINT", "INTEGER"):
        return f"TRY_CAST({raw} AS {target.sql})", raw
    return f"CAST({raw} AS {target.sql})", None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _source_select(view: str, schema: pa.Schema, channels: list[str]) -> str:
    """The rows of one group of files sharing ``schema`` (the relation ``view``): every raw-log
    column in the schema's type (NULL where the files lack it), one ``rank_<channel>`` per
    channel, why a value does not convert (``type_error``), and where the row comes from."""
    names = [c.name for c in RAW_LOGS.columns] + [f"rank_{c}" for c in channels]
    values, failures = [], []
    for name, dtype in _schema_types(names).items():
        if name in schema.names:
            value, before = _converted(name, schema.field(name).type, dtype)
        else:
            value, before = f"CAST(NULL AS {_TARGETS[dtype].sql})", None
        values.append(f"{value} AS {name}")
        if before is not None:
            reason = _literal(f"{name} is not {_TARGETS[dtype].noun}")
            failures.append(f"WHEN {before} IS NOT NULL AND {value} IS NULL THEN {reason}")
    type_error = f"CASE {' '.join(failures)} END" if failures else "CAST(NULL AS VARCHAR)"
    return (
        f"SELECT {', '.join(values)}, {type_error} AS {TYPE_ERROR}, files.file_index,"
        f" r.file_row_number AS {SOURCE_ROW}, (files.file_index << 32) | r.file_row_number AS {ROW_KEY}"
        f" FROM {view} r JOIN files ON r.filename = files.filename"
    )


def _not_utf8_rows(column: pa.ChunkedArray) -> list[int]:
    """The rows (from 1) of a text column whose bytes are not UTF-8."""
    try:
        column.validate(full=True)
        return []
    except pa.ArrowInvalid:
        pass
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    rows = []
    for row, value in enumerate(column.cast(pa.large_binary()).to_pylist(), start=1):
        try:
            if value is not None:
                value.decode("utf-8")
        except UnicodeDecodeError:
            rows.append(row)
    return rows


def _unreadable(files: list[LogFile], engine: str, con=None) -> DataValidationError | None:
    """Why one of the files cannot be read, naming it (and for text that is not UTF-8 its
    column and rows), or None when each can: pyarrow reads it whole, then (for DuckDB) DuckDB."""
    for file in files:
        try:
            table = pq.read_table(file.path)
        except (pa.ArrowInvalid, OSError) as err:
            return DataValidationError("raw_logs", file.source, f"not a readable Parquet file ({err})")
        for name in table.column_names:
            rows = _not_utf8_rows(table[name]) if _kind(table[name].type) == "string" else []
            if rows:
                return DataValidationError("raw_logs", file.source, "text that is not UTF-8", column=name, rows=rows)
        if engine == "duckdb":
            import duckdb

            try:
                con.execute(
                    "CREATE OR REPLACE TEMP TABLE readable AS SELECT * FROM read_parquet($path)", {"path": file.path}
                )
            except duckdb.Error as err:
                return DataValidationError("raw_logs", file.source, f"DuckDB cannot read it ({err})")
            con.execute("DROP TABLE readable")
    return None


def _propensities(db, cfg: ExtractionConfig, max_slot: int) -> tuple[list[float], list[str]]:
    """Examination propensity per slot 1..max_slot and where each came from."""
    given = list(cfg.propensities) + [1.0 / p for p in range(len(cfg.propensities) + 1, max_slot + 1)]
    given = given[:max_slot] or [1.0]
    values, sources = [1.0], ["reference"]
    harvest: dict[int, tuple[float, int]] = {}
    if cfg.estimate_propensities and max_slot > 1:
        rows = db.run(
            """
            WITH shown AS (SELECT query, item_id, position, sum(n) AS n, sum(clicks) AS clicks
                           FROM qip WHERE position IS NOT NULL GROUP BY ALL)
            SELECT b.position,
                   sum(a.n * b.n / (a.n + b.n) * b.clicks / b.n)
                     / nullif(sum(a.n * b.n / (a.n + b.n) * a.clicks / a.n), 0),
                   count(*)
            FROM shown a JOIN shown b USING (query, item_id)
            WHERE a.position = 1 AND b.position > 1
            GROUP BY b.position
            """
        )
        harvest = {int(p): (ratio, int(pairs)) for p, ratio, pairs in rows if ratio is not None}
    for slot in range(2, max_slot + 1):
        ratio, pairs = harvest.get(slot, (None, 0))
        if ratio is not None and pairs >= cfg.min_harvest_pairs:
            value, source = float(ratio), f"estimated from {pairs} pairs"
        else:
            value, source = float(given[slot - 1]), "given"
        values.append(min(max(value, cfg.min_propensity), values[-1]))
        sources.append(source)
    return values, sources


def holdout_windows(
    logs_uri: str,
    cfg: ExtractionConfig,
    start_date: str | None = None,
    end_date: str | None = None,
    found: list[tuple[str, str]] | None = None,
) -> tuple[tuple[str, str], tuple[str, str] | None]:
    """(first, last) days of the training window and of the held-out window: the window's last
    ``cfg.holdout_days`` days that have partitions (None when 0). ``found``: the
    :func:`partitions` of ``logs_uri``, when already listed."""
    given = _given_window(cfg, start_date, end_date)
    found = partitions(logs_uri) if found is None else found
    if not found:
        raise DataValidationError("raw_logs", logs_uri, "no Parquet log files under this prefix")
    first, last = _window([d for d, _ in found], given)
    if cfg.holdout_days <= 0:
        return (first, last), None
    days = sorted({d for d, _ in found if first <= d <= last})
    if cfg.holdout_days >= len(days):
        raise ConfigError(
            f"extraction.holdout_days={cfg.holdout_days}: the window {first} .. {last} has {len(days)} day(s) "
            "with logs, and holding out that many leaves none to train on"
        )
    held_out_first = days[-cfg.holdout_days]
    training_last = (dt.date.fromisoformat(held_out_first) - dt.timedelta(days=1)).isoformat()
    return (first, training_last), (held_out_first, last)


def write_empty_like(table_uri: str, out_uri: str) -> None:
    """A Parquet table without rows at ``out_uri``, with the columns of the one at ``table_uri``
    (only its footer is read)."""
    from unisup.data.tables import write_table

    with storage.local_copy(table_uri) as path:
        schema = pq.read_schema(path)
    write_table(schema.empty_table(), out_uri)


def extract_logs_with_holdout(
    logs_uri: str,
    out_uri: str,
    holdout_uri: str,
    cfg: ExtractionConfig,
    catalog_uri: str,
    quarantine_uri: str | None = None,
    report_uri: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
) -> tuple[dict, dict | None]:
    """:func:`extract_logs` of the training window into ``out_uri`` and of the held-out window
    (:func:`holdout_windows`) into ``holdout_uri``, its quarantine and report beside it; without
    a hold-out, ``holdout_uri`` gets an empty engagement table. Returns both reports (None for
    the second without a hold-out)."""
    check_settings(cfg)
    training, held_out = holdout_windows(logs_uri, cfg, start_date, end_date)
    with engine_session(cfg):
        report = extract_logs(logs_uri, out_uri, cfg, catalog_uri, quarantine_uri, report_uri, *training)
        if held_out is None:
            write_empty_like(out_uri, holdout_uri)
            return report, None
        held = extract_logs(logs_uri, holdout_uri, cfg, catalog_uri, start_date=held_out[0], end_date=held_out[1])
    return report, held


# The extraction's SQL phases, in DuckDB's dialect; on Spark transpiled (unisup.engines).
# Each phase reads and keeps named tables on one engine (``db``): DuckDBEngine or SparkEngine.

ROW_KEY = "row_key"  # (file_index << 32) | source_row: the rows' order across every file


@contextmanager
def extraction_engine(cfg: ExtractionConfig, tmp: str, files: list[LogFile]) -> Iterator:
    """The config's engine, scratch under ``tmp``, closed on leaving the block. DuckDB running
    out of memory is a ConfigError naming the limit; an engine error while ``files`` are read
    names the file at fault, when one is."""
    import duckdb

    engine_errors: tuple[type[BaseException], ...] = (duckdb.Error,)
    if cfg.engine == "spark":
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        engine_errors = (PySparkException, Py4JJavaError)
    with open_engine(cfg, tmp) as db:
        try:
            yield db
        except duckdb.OutOfMemoryException as err:
            raise ConfigError(
                f"extraction.duckdb_memory_limit={cfg.duckdb_memory_limit!r}: DuckDB ran out of memory ({err}); raise it"
            ) from None
        except engine_errors:
            explained = _unreadable(files, cfg.engine, getattr(db, "con", None))
            if explained is None:
                raise
            raise explained from None


def open_source(db, files: list[LogFile], channels: list[str]) -> int:
    """Create the ``files`` table and the ``src`` view over the local Parquet ``files``:
    schema-typed raw-log columns, one ``rank_<channel>`` per channel, ``type_error``,
    ``file_index``, ``source_row`` and ``row_key``. The files of each schema are read by a
    relation of their own, their values converted from that schema's types. Returns their rows."""
    db.arrow_table(
        "files",
        pa.table(
            {
                "filename": pa.array([db.reader_filename(f.path) for f in files], pa.string()),
                "source_uri": pa.array([f.source for f in files], pa.string()),
                "file_index": pa.array([f.index for f in files], pa.int64()),
            }
        ),
    )
    groups: dict[tuple, list[LogFile]] = {}
    for file in files:
        groups.setdefault(tuple((f.name, str(f.type)) for f in file.schema), []).append(file)
    selects = []
    for number, group in enumerate(groups.values()):
        view = f"raw_{number}"
        db.parquet_view(view, [f.path for f in group])
        selects.append(_source_select(view, group[0].schema, channels))
    db.view("src", "\nUNION ALL\n".join(selects))
    return sum(f.rows for f in files)


def load_known(db, known: pa.Table) -> None:
    """The ``known`` table of the catalog's distinct product ids (text)."""
    ids = pc.unique(known["product_id"].cast(pa.string()))
    db.arrow_table("known", pa.table({"product_id": ids}))


DUPLICATES_SQL = (
    f"SELECT event_id, min({ROW_KEY}) AS first_key FROM src WHERE event_id IS NOT NULL"
    " GROUP BY event_id HAVING count(*) > 1"
)  # the duplicated event ids, with the key of the first row of each


def raw_columns(channels: list[str]) -> list[str]:
    return [c.name for c in RAW_LOGS.columns] + [f"rank_{c}" for c in channels]


def _missing_sql(column: str) -> str:
    # as the schema's rule: null, or only whitespace (``$whitespace``); only a value starting with it is trimmed
    starts = ", ".join(str(ord(c)) for c in _WHITESPACE)
    return (
        f"({column} IS NULL OR {column} = '' OR (ascii({column}) IN ({starts}) AND trim({column}, $whitespace) = ''))"
    )


def quarantine_reason_sql() -> str:
    """A SQL CASE giving, for a row of the ``src`` relation joined to ``known`` (catalog ids)
    and ``dups`` (the ``row_key`` of the first occurrence of each duplicated event id), why
    one of its values does not convert, else the reason of the first ``raw_logs`` row rule it
    breaks, else NULL. Its parameters: ``$max_position``, ``$first_day`` and ``$last_day`` of
    the window (UTC), and ``$whitespace``."""
    rules = {rule.name: rule.reason for rule in RAW_LOGS.rules}
    cases = [
        ("event_id_present", _missing_sql("src.event_id")),
        ("request_id_present", _missing_sql("src.request_id")),
        ("query_present", _missing_sql("src.query")),
        ("query_printable", f"coalesce(regexp_matches(src.query, {_literal(QUERY_UNPRINTABLE)}), false)"),
        ("item_id_present", _missing_sql("src.item_id")),
        ("timestamp_present", "src.timestamp IS NULL"),
        (
            "position_possible",
            "coalesce(src.position < 1 OR src.position > $max_position::INTEGER, false)"
            " OR ((src.position IS NULL) <> (NOT coalesce(src.impression, false)))",
        ),
        ("click_needs_impression", "coalesce(src.click AND NOT coalesce(src.impression, false), false)"),
        ("conversion_needs_click", "coalesce(src.conversion AND NOT coalesce(src.click, false), false)"),
        (  # NaN equals NaN in both engines' SQL; a negative infinity is below 0
            "price_valid",
            "coalesce(src.price < 0 OR src.price IN (CAST('NaN' AS DOUBLE), CAST('Infinity' AS DOUBLE)), false)",
        ),
        ("item_known", "known.product_id IS NULL"),
        ("event_id_unique", "dups.first_key IS NOT NULL AND src.row_key <> dups.first_key"),
        (
            "timestamp_in_window",
            "src.timestamp < CAST($first_day AS DATE)::TIMESTAMPTZ"
            " OR src.timestamp >= (CAST($last_day AS DATE) + 1)::TIMESTAMPTZ",
        ),
    ]
    if [name for name, _ in cases] != [rule.name for rule in RAW_LOGS.rules]:
        raise AssertionError("the SQL row rules are out of step with unisup.schemas.RAW_LOGS")
    whens = [f"  WHEN src.{TYPE_ERROR} IS NOT NULL THEN src.{TYPE_ERROR}"]
    whens += [f"  WHEN {condition} THEN {_literal(rules[name])}" for name, condition in cases]
    return "CASE\n" + "\n".join(whens) + "\n  ELSE NULL END"


def quarantine(db, window: tuple[str, str], cfg: ExtractionConfig, channels: list[str], out: str) -> dict:
    """Give every ``src`` row the first ``raw_logs`` rule it breaks (with ``known`` and ``dups``
    loaded): the ``bad`` table, written in file and row order to ``out`` (a local Parquet file)
    as the quarantine, and the ``clean`` view of the rest. Returns the counts by reason."""
    first, last = window
    db.table(
        "bad",
        f"""
        SELECT * FROM (
          SELECT src.*, {quarantine_reason_sql()} AS {QUARANTINE_REASON}
          FROM src LEFT JOIN known ON src.item_id = known.product_id
                   LEFT JOIN dups ON src.event_id = dups.event_id
        ) checked WHERE {QUARANTINE_REASON} IS NOT NULL
        """,
        {"max_position": cfg.max_position, "first_day": first, "last_day": last, "whitespace": _WHITESPACE},
    )
    db.write_parquet(
        f"SELECT {', '.join(raw_columns(channels))}, {QUARANTINE_REASON}, {SOURCE_ROW}, "
        f"files.source_uri AS {SOURCE_FILE} FROM bad JOIN files USING (file_index) ORDER BY {ROW_KEY}",
        None,
        out,
    )
    db.view("clean", f"SELECT * FROM src ANTI JOIN bad USING ({ROW_KEY})")
    rows = db.run(f"SELECT {QUARANTINE_REASON}, count(*) FROM bad GROUP BY 1 ORDER BY 2 DESC, 1")
    return {reason: int(count) for reason, count in rows}


# per (user, day, agent, request) of the clean rows: the statistics the bot rules read
PER_REQUEST_SQL = (
    "SELECT user_id, CAST(timestamp AS DATE) AS day, user_agent, request_id, count(*) AS n,"
    " sum(CAST(impression AS INTEGER)) AS impressions, sum(CAST(click AS INTEGER)) AS clicks"
    " FROM clean GROUP BY user_id, CAST(timestamp AS DATE), user_agent, request_id"
)


def find_bots(db, cfg: ExtractionConfig) -> dict:
    """The ``bots`` table (user_id, the rules that flag it, its rows) from the clean rows'
    per-request statistics; returns the rows accepted and the bot counts by rule."""
    db.table(
        "user_days",
        f"""
        SELECT user_id, day, user_agent, sum(n) AS n, count(request_id) AS requests,
               sum(impressions) AS impressions, sum(clicks) AS clicks
        FROM ({PER_REQUEST_SQL}) requests GROUP BY user_id, day, user_agent
        """,
    )
    rows_accepted = int(db.run("SELECT coalesce(sum(n), 0) FROM user_days")[0][0])
    pattern = re.compile(cfg.bot_user_agent_pattern)
    agents = [a for (a,) in db.run("SELECT DISTINCT user_agent FROM user_days WHERE user_agent IS NOT NULL")]
    flagged_agents = pa.array([a for a in agents if pattern.search(a)], pa.string())
    db.arrow_table("bot_agents", pa.table({"user_agent": flagged_agents}))
    db.table(
        "bots",
        """
        SELECT * FROM (
          SELECT user_id,
                 bool_or(by_agent_day) AS by_agent,
                 max(day_requests) > $max_requests::BIGINT AS by_volume,
                 sum(impressions) >= $min_impressions::BIGINT
                   AND sum(clicks) > $max_ctr::DOUBLE * sum(impressions) AS by_ctr,
                 CAST(sum(n) AS BIGINT) AS n
          FROM (SELECT u.user_id, u.day, bool_or(b.user_agent IS NOT NULL) AS by_agent_day,
                       sum(u.requests) AS day_requests,
                       sum(u.impressions) AS impressions, sum(u.clicks) AS clicks, sum(u.n) AS n
                FROM user_days u LEFT JOIN bot_agents b ON u.user_agent = b.user_agent
                WHERE u.user_id IS NOT NULL GROUP BY u.user_id, u.day) per_day
          GROUP BY user_id
        ) flagged WHERE $filter_bots::BOOLEAN AND (by_agent OR by_volume OR by_ctr)
        """,
        {
            "max_requests": cfg.bot_max_requests_per_day,
            "min_impressions": cfg.bot_min_impressions,
            "max_ctr": cfg.bot_max_ctr,
            "filter_bots": cfg.filter_bots,
        },
    )
    users, by_agent, by_volume, by_ctr, rows = db.run(
        "SELECT count(*), count(*) FILTER (WHERE by_agent), count(*) FILTER (WHERE by_volume), "
        "count(*) FILTER (WHERE by_ctr), coalesce(sum(n), 0) FROM bots"
    )[0]
    return {
        "rows_accepted": rows_accepted,
        "rows_bot_filtered": int(rows),
        "bot_users": int(users),
        "bot_users_by_rule": {"user_agent": int(by_agent), "volume": int(by_volume), "ctr": int(by_ctr)},
    }


def slot_stats_sql(channels: list[str]) -> str:
    """Per (query, item, slot) statistics of the clean rows of users not in ``bots``."""
    ranks = "".join(f", min(rank_{c}) AS rank_{c}" for c in channels)
    return f"""
        SELECT query, item_id, position, count(*) AS n,
               count(*) FILTER (WHERE click) AS clicks, count(*) FILTER (WHERE conversion) AS conversions,
               coalesce(sum(price) FILTER (WHERE conversion), 0) AS revenue{ranks}
        FROM clean ANTI JOIN bots USING (user_id)
        GROUP BY query, item_id, position
        """


def write_engagement(db, cfg: ExtractionConfig, channels: list[str], out: str) -> dict:
    """From the ``qip`` table of per (query, item, slot) statistics: propensities, Beta priors and
    the engagement table at ``out`` (local Parquet). Returns the totals for the report."""
    max_slot = int(db.run("SELECT coalesce(max(position), 1) FROM qip")[0][0])
    propensity, propensity_sources = _propensities(db, cfg, max_slot)
    slots = {"position": pa.array(range(1, len(propensity) + 1), pa.int16()), "propensity": pa.array(propensity)}
    db.arrow_table("slots", pa.table(slots))
    rows_used, clicks, conversions, revenue, impressions, examined = db.run(
        "SELECT coalesce(sum(n), 0), coalesce(sum(clicks), 0), coalesce(sum(conversions), 0), "
        "coalesce(sum(revenue), 0), "
        "coalesce(sum(n) FILTER (WHERE position IS NOT NULL), 0), coalesce(sum(q.n * s.propensity), 0) "
        "FROM qip q LEFT JOIN slots s USING (position)"
    )[0]
    ctr_mean = clicks / examined if cfg.estimate_prior_means and examined > 0 and clicks > 0 else cfg.ctr_prior_mean
    cvr_mean = (
        conversions / clicks if cfg.estimate_prior_means and clicks > 0 and conversions > 0 else cfg.cvr_prior_mean
    )
    ctr_a, ctr_b = ctr_mean * cfg.ctr_prior_strength, (1 - ctr_mean) * cfg.ctr_prior_strength
    cvr_a, cvr_b = cvr_mean * cfg.cvr_prior_strength, (1 - cvr_mean) * cfg.cvr_prior_strength
    best = "".join(f", CAST(min(rank_{c}) AS INTEGER) AS best_rank_{c}" for c in channels)
    n_channels = " + ".join(f"CAST(min(rank_{c}) IS NOT NULL AS INTEGER)" for c in channels) or "0"
    db.write_parquet(
        f"""
          SELECT query, item_id,
                 CAST(coalesce(sum(n) FILTER (WHERE position IS NOT NULL), 0) AS BIGINT) AS impressions,
                 CAST(sum(clicks) AS BIGINT) AS clicks,
                 CAST(sum(conversions) AS BIGINT) AS conversions,
                 CAST(sum(revenue) AS DOUBLE) AS revenue,
                 CAST(coalesce(sum(n) FILTER (WHERE position IS NULL), 0) AS BIGINT) AS under_impressions,
                 CAST(coalesce(sum(clicks) / nullif(sum(q.n * s.propensity), 0), 0) AS DOUBLE) AS ctr_debiased,
                 CAST((sum(clicks) + $ctr_a::DOUBLE) / (coalesce(sum(q.n * s.propensity), 0) + $ctr_ab::DOUBLE)
                      AS DOUBLE) AS ctr_smoothed,
                 CAST((sum(conversions) + $cvr_a::DOUBLE) / (sum(clicks) + $cvr_ab::DOUBLE) AS DOUBLE) AS cvr_smoothed,
                 CAST({n_channels} AS TINYINT) AS n_channels{best}
          FROM qip q LEFT JOIN slots s USING (position)
          GROUP BY query, item_id ORDER BY query, item_id
        """,
        {"ctr_a": ctr_a, "ctr_ab": ctr_a + ctr_b, "cvr_a": cvr_a, "cvr_ab": cvr_a + cvr_b},
        out,
    )
    pairs = pq.ParquetFile(out).metadata.num_rows
    return {
        "rows_used": int(rows_used),
        "pairs": pairs,
        "impressions": int(impressions),
        "clicks": int(clicks),
        "conversions": int(conversions),
        "revenue": round(float(revenue), 2),
        "propensities": [round(p, 4) for p in propensity],
        "propensity_sources": propensity_sources,
        "ctr_prior": {"alpha": round(ctr_a, 6), "beta": round(ctr_b, 6)},
        "cvr_prior": {"alpha": round(cvr_a, 6), "beta": round(cvr_b, 6)},
    }


def check_accounting(source: str, rows_in: int, by_reason: dict, bots: dict, totals: dict) -> None:
    """Rows in = accepted + quarantined, and accepted = used + bot filtered, or an error; the
    revenue a finite number, or an error naming the price column."""
    rows_quarantined = int(sum(by_reason.values()))
    accepted = bots["rows_accepted"]
    if accepted != rows_in - rows_quarantined or accepted != totals["rows_used"] + bots["rows_bot_filtered"]:
        raise AssertionError(
            f"{source}: rows in {rows_in} != accepted {accepted} + quarantined {rows_quarantined}, "
            f"or accepted != used {totals['rows_used']} + bot filtered {bots['rows_bot_filtered']}"
        )
    if not math.isfinite(totals["revenue"]):
        raise DataValidationError(
            "raw_logs", source, "the prices of the converted rows add up beyond a double: not prices", column="price"
        )


def extraction_report(
    *, logs_uri, out_uri, quarantine_uri, window, files, rows_in, by_reason, bots, totals, channels, cfg, seconds
) -> dict:
    """The extraction report (see :func:`extract_logs`)."""
    return {
        "logs_uri": logs_uri,
        "engagement_uri": out_uri,
        "quarantine_uri": quarantine_uri,
        "window": list(window),
        "files": files,
        "rows_in": int(rows_in),
        "rows_accepted": bots["rows_accepted"],
        "rows_quarantined": int(sum(by_reason.values())),
        "quarantined_by_reason": by_reason,
        "rows_bot_filtered": bots["rows_bot_filtered"],
        "bot_users": bots["bot_users"],
        "bot_users_by_rule": bots["bot_users_by_rule"],
        **{k: totals[k] for k in ("rows_used", "pairs", "impressions", "clicks", "conversions", "revenue")},
        "channels": channels,
        **{k: totals[k] for k in ("propensities", "propensity_sources", "ctr_prior", "cvr_prior")},
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows_in / seconds, 1) if seconds > 0 else None,
        "config": to_dict(cfg),
    }


def write_report(report: dict, uri: str) -> None:
    """The report as strict JSON (a NaN or an infinity is an error, never written)."""
    storage.write_text(uri, json.dumps(report, indent=1, allow_nan=False))


def output_uris(out_uri: str, quarantine_uri: str | None, report_uri: str | None) -> tuple[str, str]:
    """The quarantine and report locations: as given, else beside ``out_uri``."""
    stem = str(out_uri).removesuffix(".parquet")
    return quarantine_uri or f"{stem}.quarantine.parquet", report_uri or f"{stem}.report.json"


def selected_files(logs_uri: str, cfg: ExtractionConfig, start_date: str | None, end_date: str | None):
    """The window (first, last) and the uris of its partitions' files, in order."""
    given = _given_window(cfg, start_date, end_date)
    found = partitions(logs_uri)
    if not found:
        raise DataValidationError("raw_logs", logs_uri, "no Parquet log files under this prefix")
    first, last = _window([d for d, _ in found], given)
    selected = [uri for date, uri in found if first <= date <= last]
    if not selected:
        raise DataValidationError("raw_logs", logs_uri, f"no partition in the window {first} .. {last}")
    return (first, last), selected


def extract_logs(
    logs_uri: str,
    out_uri: str,
    cfg: ExtractionConfig,
    catalog_uri: str,
    quarantine_uri: str | None = None,
    report_uri: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
) -> dict:
    """Validate, bot-filter and aggregate the raw logs of a date window into the
    ``engagement`` table at ``out_uri`` (Parquet), in this process.

    The quarantine (raw-log columns + ``quarantine_reason``, ``source_row``,
    ``source_file``) goes to ``quarantine_uri`` and the JSON report to ``report_uri``
    (defaults: beside ``out_uri``, ``*.quarantine.parquet`` and ``*.report.json``).
    The window (``start_date`` .. ``end_date`` inclusive, else the config's, else all
    partitions) selects partitions; rows timestamped outside it are quarantined.
    ``cfg.engine`` picks the engine (:mod:`unisup.engines`): DuckDB or Spark, the same tables.

    Returns the report: ``rows_in``, ``rows_accepted``, ``rows_quarantined``,
    ``quarantined_by_reason``, ``rows_bot_filtered``, ``bot_users``, ``rows_used``,
    ``pairs``, totals, ``propensities`` (+ ``propensity_sources``), the Beta priors
    used, ``channels``, ``window``, timings and the config.
    """
    started = time.perf_counter()
    check_settings(cfg)
    quarantine_uri, report_uri = output_uris(out_uri, quarantine_uri, report_uri)
    window, selected = selected_files(logs_uri, cfg, start_date, end_date)
    known = known_items(catalog_uri)
    with staged(selected, cfg.engine) as paths, tempfile.TemporaryDirectory(prefix="unisup-extract-") as tmp:
        files = read_log_files(paths, selected, range(len(paths)))
        channels = channels_of(files)
        with extraction_engine(cfg, tmp, files) as db:
            load_known(db, known)
            rows_in = open_source(db, files, channels)
            db.table("dups", DUPLICATES_SQL)
            by_reason = quarantine(db, window, cfg, channels, f"{tmp}/quarantine.parquet")
            bots = find_bots(db, cfg)
            db.table("qip", slot_stats_sql(channels))
            totals = write_engagement(db, cfg, channels, f"{tmp}/engagement.parquet")
        check_accounting(logs_uri, rows_in, by_reason, bots, totals)
        check_engagement_schema(f"{tmp}/engagement.parquet", channels, out_uri)
        storage.upload_file(f"{tmp}/engagement.parquet", out_uri)
        storage.upload_file(f"{tmp}/quarantine.parquet", quarantine_uri)
    report = extraction_report(
        logs_uri=logs_uri,
        out_uri=out_uri,
        quarantine_uri=quarantine_uri,
        window=window,
        files=len(selected),
        rows_in=rows_in,
        by_reason=by_reason,
        bots=bots,
        totals=totals,
        channels=channels,
        cfg=cfg,
        seconds=time.perf_counter() - started,
    )
    write_report(report, report_uri)
    return report


def check_engagement_schema(path: str, channels: list[str], target: str) -> None:
    """The written table has exactly the engagement schema's columns and types."""
    expected = ENGAGEMENT.arrow_schema([f"best_rank_{c}" for c in channels])
    written = pq.read_schema(path)
    got = [(f.name, f.type) for f in written]
    want = [(f.name, f.type) for f in expected]
    if got != want:
        raise AssertionError(f"{target}: engagement columns {got} differ from the schema's {want}")
