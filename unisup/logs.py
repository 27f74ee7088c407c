"""Log extraction: raw request logs -> per (query, item) engagement, with a quarantine.

:func:`extract_logs` reads a date-partitioned raw-log dataset
(``<root>/date=YYYY-MM-DD/*.parquet``, local or ``gs://``) for a date window with
DuckDB (out-of-core, bounded by ``duckdb_memory_limit``; the log is never loaded into
Python), and:

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
filtered); the report says so with counts by reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unisup import storage
from unisup.config import ExtractionConfig, to_dict
from unisup.schemas import CATALOG, ENGAGEMENT, QUARANTINE_REASON, RAW_LOGS, SOURCE_ROW, DataValidationError, validate

SOURCE_FILE = "source_file"
_DATE_PART = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")
_WHITESPACE = "' \t\n\r\x0b\x0c'"


def _missing_sql(column: str) -> str:
    # only a value that starts with whitespace can be all whitespace: trim just those
    return f"({column} IS NULL OR {column} = '' OR (ascii({column}) IN (9, 10, 11, 12, 13, 32) AND trim({column}, {_WHITESPACE}) = ''))"


def quarantine_reason_sql(max_position: int, window_start: str, window_end: str) -> str:
    """A SQL CASE giving, for a row of the ``src`` relation joined to ``known`` (catalog
    ids) and ``dups`` (the ``row_key`` of the first occurrence of each duplicated event id),
    the reason of the first ``raw_logs`` row rule it breaks, or NULL. Window bounds are UTC
    timestamps (start inclusive, end exclusive)."""
    rules = {rule.name: rule.reason for rule in RAW_LOGS.rules}
    cases = [
        ("event_id_present", _missing_sql("src.event_id")),
        ("request_id_present", _missing_sql("src.request_id")),
        ("query_present", _missing_sql("src.query")),
        ("item_id_present", _missing_sql("src.item_id")),
        ("timestamp_present", "src.timestamp IS NULL"),
        (
            "position_possible",
            f"coalesce(src.position < 1 OR src.position > {int(max_position)}, false)"
            " OR ((src.position IS NULL) <> (NOT coalesce(src.impression, false)))",
        ),
        ("click_needs_impression", "coalesce(src.click AND NOT coalesce(src.impression, false), false)"),
        ("conversion_needs_click", "coalesce(src.conversion AND NOT coalesce(src.click, false), false)"),
        ("item_known", "known.product_id IS NULL"),
        ("event_id_unique", "dups.first_key IS NOT NULL AND src.row_key <> dups.first_key"),
        (
            "timestamp_in_window",
            f"src.timestamp < TIMESTAMPTZ '{window_start}+00' OR src.timestamp >= TIMESTAMPTZ '{window_end}+00'",
        ),
    ]
    if [name for name, _ in cases] != [rule.name for rule in RAW_LOGS.rules]:
        raise AssertionError("the SQL row rules are out of step with unisup.schemas.RAW_LOGS")
    whens = "\n".join(f"  WHEN {condition} THEN '{rules[name]}'" for name, condition in cases)
    return f"CASE\n{whens}\n  ELSE NULL END"


def partitions(logs_uri: str) -> list[tuple[str, str]]:
    """(date, uri) of every Parquet file under ``logs_uri``, sorted; each must sit in a
    ``date=YYYY-MM-DD`` folder."""
    files = [u for u in storage.list_prefix(logs_uri) if u.endswith(".parquet")]
    out = []
    for uri in files:
        match = _DATE_PART.search(
            uri[len(str(logs_uri).rstrip("/")) :] if uri.startswith(str(logs_uri).rstrip("/")) else uri
        )
        if not match:
            raise DataValidationError("raw_logs", uri, "log file is not inside a date=YYYY-MM-DD partition folder")
        out.append((match.group(1), uri))
    return sorted(out)


@contextmanager
def staged(uris: list[str]) -> Iterator[list[str]]:
    """Local paths of the files: themselves when local, else copies in a temporary folder."""
    if not any(storage.is_gcs(u) for u in uris):
        yield uris
        return
    with tempfile.TemporaryDirectory(prefix="unisup-logs-") as tmp:
        local = []
        for index, uri in enumerate(uris):
            name = "/".join(uri.rstrip("/").split("/")[-2:])
            local.append(str(storage.download_file(uri, Path(tmp) / f"{index:06d}" / name)))
        yield local


def known_items(catalog_uri: str) -> pa.Table:
    """The catalog's product ids, validated (strictly) as by ``load_catalog``; of a Parquet
    catalog only the columns the schema requires or its rules read are loaded."""
    from unisup.data.sample import load_catalog

    if str(catalog_uri).endswith(".parquet"):
        with contextlib.suppress(pa.ArrowInvalid):  # not readable: load_catalog says why
            file = pq.ParquetFile(io.BytesIO(storage.read_bytes(catalog_uri)))
            needed = {c.name for c in CATALOG.columns if c.required} | {r.column for r in CATALOG.rules}
            table = file.read(columns=[name for name in file.schema_arrow.names if name in needed])
            return validate(table, "catalog", catalog_uri).accepted.select(["product_id"])
    return load_catalog(catalog_uri).accepted.select(["product_id"])


def file_columns(files: list[str], sources: list[str]) -> tuple[set[str], list[str]]:
    """Columns present in any file and the channel names; a missing required column is an error."""
    present: set[str] = set()
    required = [c.name for c in RAW_LOGS.columns if c.required]
    for path, source in zip(files, sources, strict=False):
        names = pq.read_schema(path).names
        for column in required:
            if column not in names:
                raise DataValidationError(
                    "raw_logs", source, f"required column is missing (found: {', '.join(names)})", column=column
                )
        present.update(names)
    channels = sorted(name[len("rank_") :] for name in RAW_LOGS.dynamic_names(present))
    return present, channels


def _source_select(present: set[str], channels: list[str]) -> str:
    """The raw-log columns cast to the schema's types (NULL where no file has them) and one
    ``rank_<channel>`` per channel."""
    casts = []
    for column in RAW_LOGS.columns:
        sql_type = {
            "string": "VARCHAR",
            "int16": "SMALLINT",
            "bool": "BOOLEAN",
            "double": "DOUBLE",
        }.get(str(column.type), "TIMESTAMPTZ")
        value = f"CAST(r.{column.name} AS {sql_type})" if column.name in present else f"CAST(NULL AS {sql_type})"
        casts.append(f"{value} AS {column.name}")
    for channel in channels:
        value = f"r.rank_{channel}" if f"rank_{channel}" in present else "NULL"
        casts.append(f"CAST({value} AS INTEGER) AS rank_{channel}")
    return ",\n  ".join(casts)


def _window(dates: list[str], cfg: ExtractionConfig, start: str | None, end: str | None) -> tuple[str, str]:
    first = start or cfg.start_date or dates[0]
    last = end or cfg.end_date or dates[-1]
    for value in (first, last):
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"window date {value!r} is not YYYY-MM-DD") from None
    if last < first:
        raise ValueError(f"window ends ({last}) before it starts ({first})")
    return first, last


def _propensities(con, cfg: ExtractionConfig, max_slot: int) -> tuple[list[float], list[str]]:
    """Examination propensity per slot 1..max_slot and where each came from."""
    given = list(cfg.propensities) + [1.0 / p for p in range(len(cfg.propensities) + 1, max_slot + 1)]
    given = given[:max_slot] or [1.0]
    values, sources = [1.0], ["reference"]
    harvest: dict[int, tuple[float, int]] = {}
    if cfg.estimate_propensities and max_slot > 1:
        rows = con.execute(
            """
            WITH shown AS (SELECT query, item_id, position, sum(n) AS n, sum(clicks) AS clicks
                           FROM qip WHERE position IS NOT NULL GROUP BY ALL)
            SELECT b.position,
                   sum(a.n * b.n / (a.n + b.n) * b.clicks / b.n) / nullif(sum(a.n * b.n / (a.n + b.n) * a.clicks / a.n), 0),
                   count(*)
            FROM shown a JOIN shown b USING (query, item_id)
            WHERE a.position = 1 AND b.position > 1
            GROUP BY b.position
            """
        ).fetchall()
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
    found = partitions(logs_uri) if found is None else found
    if not found:
        raise DataValidationError("raw_logs", logs_uri, "no Parquet log files under this prefix")
    first, last = _window([d for d, _ in found], cfg, start_date, end_date)
    if cfg.holdout_days <= 0:
        return (first, last), None
    days = sorted({d for d, _ in found if first <= d <= last})
    if cfg.holdout_days >= len(days):
        raise ValueError(
            f"extraction.holdout_days={cfg.holdout_days}: the window {first} .. {last} has {len(days)} day(s) "
            "with logs, and holding out that many leaves none to train on"
        )
    held_out_first = days[-cfg.holdout_days]
    training_last = (dt.date.fromisoformat(held_out_first) - dt.timedelta(days=1)).isoformat()
    return (first, training_last), (held_out_first, last)


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
    from unisup.data.tables import read_table, write_table

    training, held_out = holdout_windows(logs_uri, cfg, start_date, end_date)
    report = extract_logs(logs_uri, out_uri, cfg, catalog_uri, quarantine_uri, report_uri, *training)
    if held_out is None:
        write_table(read_table(out_uri).schema.empty_table(), holdout_uri)
        return report, None
    return report, extract_logs(logs_uri, holdout_uri, cfg, catalog_uri, start_date=held_out[0], end_date=held_out[1])


# The extraction's SQL phases. The single-process extract_logs runs them all on one DuckDB
# connection; the sharded extraction (unisup.log_shards) runs each on a shard's files and
# merges the shards' partial tables with the same SQL, so both give the same tables.

ROW_KEY = "row_key"  # (file_index << 32) | source_row: the rows' order across every file


def connect(cfg: ExtractionConfig, tmp: str):
    """A DuckDB connection with the config's memory limit and threads, spilling under ``tmp``."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{cfg.duckdb_memory_limit}'")
    con.execute(f"SET threads = {int(cfg.duckdb_threads)}")
    con.execute(f"SET temp_directory = '{tmp}/spill'")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    return con


def parquet_list(paths: list[str]) -> str:
    """A DuckDB list literal of file paths."""
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def open_source(
    con, files: list[str], sources: list[str], file_indexes: list[int], present: set[str], channels: list[str]
) -> int:
    """Create the ``files`` table and the ``src`` view (schema-typed raw-log columns plus
    ``file_index``, ``source_row`` and ``row_key``) over local Parquet ``files``; returns their rows."""
    create_table(
        con,
        "files",
        {
            "filename": pa.array(files),
            "source_uri": pa.array(sources),
            "file_index": pa.array(file_indexes, pa.int64()),
        },
    )
    file_list = parquet_list(files)
    con.execute(
        f"""
        CREATE TEMP VIEW src AS SELECT
          {_source_select(present, channels)},
          files.file_index, r.file_row_number AS {SOURCE_ROW},
          (files.file_index << 32) | r.file_row_number AS {ROW_KEY}
        FROM read_parquet({file_list}, filename = true, file_row_number = true, union_by_name = true) r
        JOIN files ON r.filename = files.filename
        """
    )
    return int(con.execute(f"SELECT count(*) FROM read_parquet({file_list}, union_by_name = true)").fetchall()[0][0])


def load_known(con, known: pa.Table) -> None:
    """The ``known`` table of catalog product ids."""
    con.register("catalog_ids", known)
    con.execute("CREATE TEMP TABLE known AS SELECT DISTINCT CAST(product_id AS VARCHAR) AS product_id FROM catalog_ids")
    con.unregister("catalog_ids")


# the event id and key of every row with an id: a shard's scan, partitioned by the id's bucket
EVENT_KEYS_SQL = f"SELECT event_id, {ROW_KEY} FROM src WHERE event_id IS NOT NULL"


def duplicates_sql(relation: str) -> str:
    """The duplicated event ids of a relation of (event_id, row_key) rows, with the key of the
    first row of each: of ``src`` in a single pass, of one bucket of every scan in a sharded one."""
    return (
        f"SELECT event_id, min({ROW_KEY}) AS first_key FROM {relation} WHERE event_id IS NOT NULL"
        " GROUP BY event_id HAVING count(*) > 1"
    )


def raw_columns(channels: list[str]) -> list[str]:
    return [c.name for c in RAW_LOGS.columns] + [f"rank_{c}" for c in channels]


def quarantine(con, window: tuple[str, str], cfg: ExtractionConfig, channels: list[str], out: str | None) -> dict:
    """Give every ``src`` row the first ``raw_logs`` rule it breaks (with ``known`` and ``dups``
    loaded): the ``bad`` table, written in file and row order to ``out`` (Parquet; skipped when
    None) as the quarantine, and the ``clean`` view of the rest. Returns the counts by reason."""
    first, last = window
    window_end = (dt.date.fromisoformat(last) + dt.timedelta(days=1)).isoformat()
    reason = quarantine_reason_sql(max(cfg.max_position, 1), f"{first} 00:00:00", f"{window_end} 00:00:00")
    con.execute(
        f"""
        CREATE TEMP TABLE bad AS
        SELECT * FROM (
          SELECT src.*, {reason} AS {QUARANTINE_REASON}
          FROM src LEFT JOIN known ON src.item_id = known.product_id
                   LEFT JOIN dups ON src.event_id = dups.event_id
        ) WHERE {QUARANTINE_REASON} IS NOT NULL
        """
    )
    if out is not None:
        con.execute(
            f"COPY (SELECT {', '.join(raw_columns(channels))}, {QUARANTINE_REASON}, {SOURCE_ROW}, "
            f"files.source_uri AS {SOURCE_FILE} FROM bad JOIN files USING (file_index) ORDER BY {ROW_KEY}) "
            f"TO '{out}' (FORMAT PARQUET, COMPRESSION ZSTD)"
        )
    con.execute(f"CREATE TEMP VIEW clean AS SELECT * FROM src ANTI JOIN bad USING ({ROW_KEY})")
    rows = con.execute(f"SELECT {QUARANTINE_REASON}, count(*) FROM bad GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    return {reason: int(count) for reason, count in rows}


# per request of the clean rows (or of per-request parts): the statistics the bot rules read
CLEAN_REQUEST_ROWS_SQL = (
    "SELECT user_id, CAST(timestamp AS DATE) AS day, user_agent, request_id, 1 AS n,"
    " CAST(impression AS INTEGER) AS impressions, CAST(click AS INTEGER) AS clicks FROM clean"
)


def per_request_sql(rows: str) -> str:
    """Rows (or partial sums) grouped per (user, day, agent, request)."""
    return (
        "SELECT user_id, day, user_agent, request_id, CAST(sum(n) AS BIGINT) AS n,"
        " CAST(sum(impressions) AS BIGINT) AS impressions, CAST(sum(clicks) AS BIGINT) AS clicks"
        f" FROM ({rows}) GROUP BY ALL"
    )


def find_bots(con, cfg: ExtractionConfig, per_request: str) -> dict:
    """The ``bots`` table (user_id, the rules that flag it, its rows) from per-request
    statistics; returns the rows accepted and the bot counts by rule."""
    con.execute(
        f"""
        CREATE TEMP TABLE user_days AS
        SELECT user_id, day, user_agent, sum(n) AS n, count(request_id) AS requests,
               sum(impressions) AS impressions, sum(clicks) AS clicks
        FROM ({per_request}) GROUP BY ALL
        """
    )
    rows_accepted = int(con.execute("SELECT coalesce(sum(n), 0) FROM user_days").fetchall()[0][0])
    pattern = re.compile(cfg.bot_user_agent_pattern)
    agents = [
        a for (a,) in con.execute("SELECT DISTINCT user_agent FROM user_days WHERE user_agent IS NOT NULL").fetchall()
    ]
    create_table(con, "bot_agents", {"user_agent": pa.array([a for a in agents if pattern.search(a)], pa.string())})
    con.execute(
        f"""
        CREATE TEMP TABLE bots AS
        SELECT user_id,
               bool_or(by_agent_day) AS by_agent,
               max(day_requests) > {int(cfg.bot_max_requests_per_day)} AS by_volume,
               sum(impressions) >= {int(cfg.bot_min_impressions)}
                 AND sum(clicks) > {float(cfg.bot_max_ctr)} * sum(impressions) AS by_ctr,
               CAST(sum(n) AS BIGINT) AS n
        FROM (SELECT user_id, day, bool_or(user_agent IN (SELECT user_agent FROM bot_agents)) AS by_agent_day,
                     sum(requests) AS day_requests,
                     sum(impressions) AS impressions, sum(clicks) AS clicks, sum(n) AS n
              FROM user_days WHERE user_id IS NOT NULL GROUP BY user_id, day) per_day
        GROUP BY user_id
        """
    )
    if cfg.filter_bots:
        con.execute("DELETE FROM bots WHERE NOT (by_agent OR by_volume OR by_ctr)")
    else:
        con.execute("DELETE FROM bots")
    users, by_agent, by_volume, by_ctr, rows = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE by_agent), count(*) FILTER (WHERE by_volume), "
        "count(*) FILTER (WHERE by_ctr), coalesce(sum(n), 0) FROM bots"
    ).fetchall()[0]
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
        FROM clean WHERE user_id IS NULL OR user_id NOT IN (SELECT user_id FROM bots)
        GROUP BY query, item_id, position
        """


def merged_slot_stats_sql(parts: str, channels: list[str]) -> str:
    """Per-shard (query, item, slot) statistics summed into those of all the shards."""
    ranks = "".join(f", min(rank_{c}) AS rank_{c}" for c in channels)
    return (
        "SELECT query, item_id, position, CAST(sum(n) AS BIGINT) AS n, CAST(sum(clicks) AS BIGINT) AS clicks,"
        f" CAST(sum(conversions) AS BIGINT) AS conversions, sum(revenue) AS revenue{ranks}"
        f" FROM {parts} GROUP BY query, item_id, position"
    )


def write_engagement(con, cfg: ExtractionConfig, channels: list[str], out: str) -> dict:
    """From the ``qip`` table of per (query, item, slot) statistics: propensities, Beta priors and
    the engagement table at ``out`` (local Parquet). Returns the totals for the report."""
    max_slot = int(con.execute("SELECT coalesce(max(position), 1) FROM qip").fetchall()[0][0])
    propensity, propensity_sources = _propensities(con, cfg, max_slot)
    create_table(
        con,
        "slots",
        {
            "position": pa.array(range(1, len(propensity) + 1), pa.int16()),
            "propensity": pa.array(propensity, pa.float64()),
        },
    )
    rows_used, clicks, conversions, revenue, impressions, examined = con.execute(
        "SELECT coalesce(sum(n), 0), coalesce(sum(clicks), 0), coalesce(sum(conversions), 0), coalesce(sum(revenue), 0), "
        "coalesce(sum(n) FILTER (WHERE position IS NOT NULL), 0), coalesce(sum(q.n * s.propensity), 0) "
        "FROM qip q LEFT JOIN slots s USING (position)"
    ).fetchall()[0]
    ctr_mean = clicks / examined if cfg.estimate_prior_means and examined > 0 and clicks > 0 else cfg.ctr_prior_mean
    cvr_mean = (
        conversions / clicks if cfg.estimate_prior_means and clicks > 0 and conversions > 0 else cfg.cvr_prior_mean
    )
    ctr_a, ctr_b = ctr_mean * cfg.ctr_prior_strength, (1 - ctr_mean) * cfg.ctr_prior_strength
    cvr_a, cvr_b = cvr_mean * cfg.cvr_prior_strength, (1 - cvr_mean) * cfg.cvr_prior_strength
    best = "".join(f", CAST(min(rank_{c}) AS INTEGER) AS best_rank_{c}" for c in channels)
    n_channels = " + ".join(f"CAST(min(rank_{c}) IS NOT NULL AS INTEGER)" for c in channels) or "0"
    con.execute(
        f"""
        COPY (
          SELECT query, item_id,
                 CAST(coalesce(sum(n) FILTER (WHERE position IS NOT NULL), 0) AS BIGINT) AS impressions,
                 CAST(sum(clicks) AS BIGINT) AS clicks,
                 CAST(sum(conversions) AS BIGINT) AS conversions,
                 CAST(sum(revenue) AS DOUBLE) AS revenue,
                 CAST(coalesce(sum(n) FILTER (WHERE position IS NULL), 0) AS BIGINT) AS under_impressions,
                 CAST(coalesce(sum(clicks) / nullif(sum(q.n * s.propensity), 0), 0) AS DOUBLE) AS ctr_debiased,
                 CAST((sum(clicks) + {ctr_a}) / (coalesce(sum(q.n * s.propensity), 0) + {ctr_a + ctr_b}) AS DOUBLE) AS ctr_smoothed,
                 CAST((sum(conversions) + {cvr_a}) / (sum(clicks) + {cvr_a + cvr_b}) AS DOUBLE) AS cvr_smoothed,
                 CAST({n_channels} AS TINYINT) AS n_channels{best}
          FROM qip q LEFT JOIN slots s USING (position)
          GROUP BY query, item_id ORDER BY query, item_id
        ) TO '{out}' (FORMAT PARQUET, COMPRESSION ZSTD)
        """
    )
    pairs = int(con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0])
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
    """Rows in = accepted + quarantined, and accepted = used + bot filtered, or an error."""
    rows_quarantined = int(sum(by_reason.values()))
    accepted = bots["rows_accepted"]
    if accepted != rows_in - rows_quarantined or accepted != totals["rows_used"] + bots["rows_bot_filtered"]:
        raise AssertionError(
            f"{source}: rows in {rows_in} != accepted {accepted} + quarantined {rows_quarantined}, "
            f"or accepted != used {totals['rows_used']} + bot filtered {bots['rows_bot_filtered']}"
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


def output_uris(out_uri: str, quarantine_uri: str | None, report_uri: str | None) -> tuple[str, str]:
    """The quarantine and report locations: as given, else beside ``out_uri``."""
    stem = str(out_uri).removesuffix(".parquet")
    return quarantine_uri or f"{stem}.quarantine.parquet", report_uri or f"{stem}.report.json"


def selected_files(logs_uri: str, cfg: ExtractionConfig, start_date: str | None, end_date: str | None):
    """The window (first, last) and the uris of its partitions' files, in order."""
    found = partitions(logs_uri)
    if not found:
        raise DataValidationError("raw_logs", logs_uri, "no Parquet log files under this prefix")
    first, last = _window([d for d, _ in found], cfg, start_date, end_date)
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
    :func:`unisup.log_shards.extract_logs_sharded` gives the same tables over shards.

    Returns the report: ``rows_in``, ``rows_accepted``, ``rows_quarantined``,
    ``quarantined_by_reason``, ``rows_bot_filtered``, ``bot_users``, ``rows_used``,
    ``pairs``, totals, ``propensities`` (+ ``propensity_sources``), the Beta priors
    used, ``channels``, ``window``, timings and the config.
    """
    started = time.perf_counter()
    quarantine_uri, report_uri = output_uris(out_uri, quarantine_uri, report_uri)
    window, selected = selected_files(logs_uri, cfg, start_date, end_date)
    known = known_items(catalog_uri)
    with staged(selected) as files, tempfile.TemporaryDirectory(prefix="unisup-extract-") as tmp:
        present, channels = file_columns(files, selected)
        con = connect(cfg, tmp)
        load_known(con, known)
        rows_in = open_source(con, files, selected, list(range(len(files))), present, channels)
        con.execute(f"CREATE TEMP TABLE dups AS {duplicates_sql('src')}")
        by_reason = quarantine(con, window, cfg, channels, f"{tmp}/quarantine.parquet")
        bots = find_bots(con, cfg, per_request_sql(CLEAN_REQUEST_ROWS_SQL))
        con.execute(f"CREATE TEMP TABLE qip AS {slot_stats_sql(channels)}")
        totals = write_engagement(con, cfg, channels, f"{tmp}/engagement.parquet")
        con.close()
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
    storage.write_text(report_uri, json.dumps(report, indent=1))
    return report


def create_table(con, name: str, columns: dict[str, pa.Array]) -> None:
    """A small temporary DuckDB table from Arrow columns."""
    con.register(f"{name}_arrow", pa.table(columns))
    con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    con.unregister(f"{name}_arrow")


def check_engagement_schema(path: str, channels: list[str], target: str) -> None:
    """The written table has exactly the engagement schema's columns and types."""
    expected = ENGAGEMENT.arrow_schema([f"best_rank_{c}" for c in channels])
    written = pq.read_schema(path)
    got = [(f.name, f.type) for f in written]
    want = [(f.name, f.type) for f in expected]
    if got != want:
        raise AssertionError(f"{target}: engagement columns {got} differ from the schema's {want}")
