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
    ids) and ``dups`` (first file and row of each duplicated event id), the reason of the
    first ``raw_logs`` row rule it breaks, or NULL. Window bounds are UTC timestamps
    (start inclusive, end exclusive)."""
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
        (
            "event_id_unique",
            f"dups.first_path IS NOT NULL AND (src.source_path <> dups.first_path OR src.{SOURCE_ROW} <> dups.first_row)",
        ),
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
def _staged(uris: list[str]) -> Iterator[list[str]]:
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


def _known_items(catalog_uri: str) -> pa.Table:
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


def _columns(files: list[str], sources: list[str]) -> tuple[set[str], list[str]]:
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
    casts += [f"CAST(r.rank_{c} AS INTEGER) AS rank_{c}" for c in channels]
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
    logs_uri: str, cfg: ExtractionConfig, start_date: str | None = None, end_date: str | None = None
) -> tuple[tuple[str, str], tuple[str, str] | None]:
    """(first, last) days of the training window and of the held-out window: the window's last
    ``cfg.holdout_days`` days that have partitions (None when 0)."""
    found = partitions(logs_uri)
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
    ``engagement`` table at ``out_uri`` (Parquet).

    The quarantine (raw-log columns + ``quarantine_reason``, ``source_row``,
    ``source_file``) goes to ``quarantine_uri`` and the JSON report to ``report_uri``
    (defaults: beside ``out_uri``, ``*.quarantine.parquet`` and ``*.report.json``).
    The window (``start_date`` .. ``end_date`` inclusive, else the config's, else all
    partitions) selects partitions; rows timestamped outside it are quarantined.

    Returns the report: ``rows_in``, ``rows_accepted``, ``rows_quarantined``,
    ``quarantined_by_reason``, ``rows_bot_filtered``, ``bot_users``, ``rows_used``,
    ``pairs``, totals, ``propensities`` (+ ``propensity_sources``), the Beta priors
    used, ``channels``, ``window``, timings and the config.
    """
    import duckdb

    started = time.perf_counter()
    stem = str(out_uri)[: -len(".parquet")] if str(out_uri).endswith(".parquet") else str(out_uri)
    quarantine_uri = quarantine_uri or f"{stem}.quarantine.parquet"
    report_uri = report_uri or f"{stem}.report.json"
    found = partitions(logs_uri)
    if not found:
        raise DataValidationError("raw_logs", logs_uri, "no Parquet log files under this prefix")
    first, last = _window([d for d, _ in found], cfg, start_date, end_date)
    selected = [uri for date, uri in found if first <= date <= last]
    if not selected:
        raise DataValidationError("raw_logs", logs_uri, f"no partition in the window {first} .. {last}")
    window_end = (dt.date.fromisoformat(last) + dt.timedelta(days=1)).isoformat()
    known = _known_items(catalog_uri)

    with _staged(selected) as files, tempfile.TemporaryDirectory(prefix="unisup-extract-") as tmp:
        present, channels = _columns(files, selected)
        con = duckdb.connect()
        con.execute(f"SET memory_limit = '{cfg.duckdb_memory_limit}'")
        con.execute(f"SET threads = {int(cfg.duckdb_threads)}")
        con.execute(f"SET temp_directory = '{tmp}/spill'")
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = false")
        con.register("catalog_ids", known)
        con.execute(
            "CREATE TEMP TABLE known AS SELECT DISTINCT CAST(product_id AS VARCHAR) AS product_id FROM catalog_ids"
        )
        _create_table(
            con,
            "files",
            {
                "filename": pa.array(files),
                "source_uri": pa.array(selected),
                "file_index": pa.array(range(len(files)), pa.int64()),
            },
        )
        file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
        con.execute(
            f"""
            CREATE TEMP VIEW src AS SELECT
              {_source_select(present, channels)},
              r.filename AS source_path, r.file_row_number AS {SOURCE_ROW}
            FROM read_parquet({file_list}, filename = true, file_row_number = true, union_by_name = true) r
            """
        )
        rows_in = con.execute(f"SELECT count(*) FROM read_parquet({file_list}, union_by_name = true)").fetchall()[0][0]

        # 1. validation: duplicated event ids, then the first broken rule of every row
        # (files are in partition order, so the first occurrence is the least (path, row))
        con.execute(
            f"""
            CREATE TEMP TABLE dups AS
            SELECT event_id, first.f AS first_path, first.r AS first_row
            FROM (SELECT event_id, min({{'f': source_path, 'r': {SOURCE_ROW}}}) AS first FROM src
                  WHERE event_id IN (SELECT event_id FROM src WHERE event_id IS NOT NULL GROUP BY event_id HAVING count(*) > 1)
                  GROUP BY event_id)
            """
        )
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
        raw_columns = [c.name for c in RAW_LOGS.columns] + [f"rank_{c}" for c in channels]
        local_quarantine = f"{tmp}/quarantine.parquet"
        con.execute(
            f"COPY (SELECT {', '.join(raw_columns)}, {QUARANTINE_REASON}, {SOURCE_ROW}, files.source_uri AS {SOURCE_FILE} "
            f"FROM bad JOIN files ON bad.source_path = files.filename ORDER BY files.file_index, {SOURCE_ROW}) "
            f"TO '{local_quarantine}' (FORMAT PARQUET, COMPRESSION ZSTD)"
        )
        by_reason = dict(
            con.execute(f"SELECT {QUARANTINE_REASON}, count(*) FROM bad GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
        )
        con.execute(f"CREATE TEMP VIEW clean AS SELECT * FROM src ANTI JOIN bad USING (source_path, {SOURCE_ROW})")

        # 2. bot filter, from per (user, day, agent) statistics of the accepted rows (grouped
        # per request first, so requests are a plain count, not a DISTINCT aggregate)
        con.execute(
            """
            CREATE TEMP TABLE user_days AS
            SELECT user_id, day, user_agent, sum(n) AS n, count(request_id) AS requests,
                   sum(impressions) AS impressions, sum(clicks) AS clicks
            FROM (SELECT user_id, CAST(timestamp AS DATE) AS day, user_agent, request_id, count(*) AS n,
                         count(*) FILTER (WHERE impression) AS impressions, count(*) FILTER (WHERE click) AS clicks
                  FROM clean GROUP BY ALL) per_request
            GROUP BY ALL
            """
        )
        rows_accepted = int(con.execute("SELECT coalesce(sum(n), 0) FROM user_days").fetchall()[0][0])
        pattern = re.compile(cfg.bot_user_agent_pattern)
        agents = [
            a
            for (a,) in con.execute("SELECT DISTINCT user_agent FROM user_days WHERE user_agent IS NOT NULL").fetchall()
        ]
        _create_table(
            con, "bot_agents", {"user_agent": pa.array([a for a in agents if pattern.search(a)], pa.string())}
        )
        con.execute(
            f"""
            CREATE TEMP TABLE bots AS
            SELECT user_id,
                   bool_or(by_agent_day) AS by_agent,
                   max(day_requests) > {int(cfg.bot_max_requests_per_day)} AS by_volume,
                   sum(impressions) >= {int(cfg.bot_min_impressions)}
                     AND sum(clicks) > {float(cfg.bot_max_ctr)} * sum(impressions) AS by_ctr,
                   sum(n) AS n
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
        bot_rule_counts = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE by_agent), count(*) FILTER (WHERE by_volume), "
            "count(*) FILTER (WHERE by_ctr), coalesce(sum(n), 0) FROM bots"
        ).fetchall()[0]

        # 3. per (query, item, slot) statistics of the rows used
        ranks = ", ".join(f"min(rank_{c}) AS rank_{c}" for c in channels)
        con.execute(
            f"""
            CREATE TEMP TABLE qip AS
            SELECT query, item_id, position, count(*) AS n,
                   count(*) FILTER (WHERE click) AS clicks, count(*) FILTER (WHERE conversion) AS conversions,
                   coalesce(sum(price) FILTER (WHERE conversion), 0) AS revenue{", " + ranks if ranks else ""}
            FROM clean WHERE user_id IS NULL OR user_id NOT IN (SELECT user_id FROM bots)
            GROUP BY query, item_id, position
            """
        )
        max_slot = int(con.execute("SELECT coalesce(max(position), 1) FROM qip").fetchall()[0][0])
        propensity, propensity_sources = _propensities(con, cfg, max_slot)
        _create_table(
            con,
            "slots",
            {
                "position": pa.array(range(1, len(propensity) + 1), pa.int16()),
                "propensity": pa.array(propensity, pa.float64()),
            },
        )
        totals = con.execute(
            "SELECT coalesce(sum(n), 0), coalesce(sum(clicks), 0), coalesce(sum(conversions), 0), coalesce(sum(revenue), 0), "
            "coalesce(sum(n) FILTER (WHERE position IS NOT NULL), 0), coalesce(sum(q.n * s.propensity), 0) "
            "FROM qip q LEFT JOIN slots s USING (position)"
        ).fetchall()[0]
        rows_used, clicks, conversions, revenue, impressions, examined = totals
        ctr_mean = clicks / examined if cfg.estimate_prior_means and examined > 0 and clicks > 0 else cfg.ctr_prior_mean
        cvr_mean = (
            conversions / clicks if cfg.estimate_prior_means and clicks > 0 and conversions > 0 else cfg.cvr_prior_mean
        )
        ctr_a, ctr_b = ctr_mean * cfg.ctr_prior_strength, (1 - ctr_mean) * cfg.ctr_prior_strength
        cvr_a, cvr_b = cvr_mean * cfg.cvr_prior_strength, (1 - cvr_mean) * cfg.cvr_prior_strength

        # 4. the engagement table
        best = ", ".join(f"CAST(min(rank_{c}) AS INTEGER) AS best_rank_{c}" for c in channels)
        n_channels = " + ".join(f"CAST(min(rank_{c}) IS NOT NULL AS INTEGER)" for c in channels) or "0"
        local_engagement = f"{tmp}/engagement.parquet"
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
                     CAST({n_channels} AS TINYINT) AS n_channels{", " + best if best else ""}
              FROM qip q LEFT JOIN slots s USING (position)
              GROUP BY query, item_id ORDER BY query, item_id
            ) TO '{local_engagement}' (FORMAT PARQUET, COMPRESSION ZSTD)
            """
        )
        pairs = int(con.execute(f"SELECT count(*) FROM read_parquet('{local_engagement}')").fetchall()[0][0])
        con.close()
        _check_engagement_schema(local_engagement, channels, out_uri)
        storage.upload_file(local_engagement, out_uri)
        storage.upload_file(local_quarantine, quarantine_uri)

    rows_quarantined = int(sum(by_reason.values()))
    rows_accepted_check = rows_in - rows_quarantined
    if rows_accepted != rows_accepted_check or rows_accepted != int(rows_used) + int(bot_rule_counts[4]):
        raise AssertionError(
            f"{logs_uri}: rows in {rows_in} != accepted {rows_accepted} + quarantined {rows_quarantined}, "
            f"or accepted != used {rows_used} + bot filtered {bot_rule_counts[4]}"
        )
    seconds = time.perf_counter() - started
    report = {
        "logs_uri": logs_uri,
        "engagement_uri": out_uri,
        "quarantine_uri": quarantine_uri,
        "window": [first, last],
        "files": len(selected),
        "rows_in": int(rows_in),
        "rows_accepted": rows_accepted,
        "rows_quarantined": rows_quarantined,
        "quarantined_by_reason": {k: int(v) for k, v in by_reason.items()},
        "rows_bot_filtered": int(bot_rule_counts[4]),
        "bot_users": int(bot_rule_counts[0]),
        "bot_users_by_rule": {
            "user_agent": int(bot_rule_counts[1]),
            "volume": int(bot_rule_counts[2]),
            "ctr": int(bot_rule_counts[3]),
        },
        "rows_used": int(rows_used),
        "pairs": pairs,
        "impressions": int(impressions),
        "clicks": int(clicks),
        "conversions": int(conversions),
        "revenue": round(float(revenue), 2),
        "channels": channels,
        "propensities": [round(p, 4) for p in propensity],
        "propensity_sources": propensity_sources,
        "ctr_prior": {"alpha": round(ctr_a, 6), "beta": round(ctr_b, 6)},
        "cvr_prior": {"alpha": round(cvr_a, 6), "beta": round(cvr_b, 6)},
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows_in / seconds, 1) if seconds > 0 else None,
        "config": to_dict(cfg),
    }
    storage.write_text(report_uri, json.dumps(report, indent=1))
    return report


def _create_table(con, name: str, columns: dict[str, pa.Array]) -> None:
    """A small temporary DuckDB table from Arrow columns."""
    con.register(f"{name}_arrow", pa.table(columns))
    con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    con.unregister(f"{name}_arrow")


def _check_engagement_schema(path: str, channels: list[str], target: str) -> None:
    """The written table has exactly the engagement schema's columns and types."""
    expected = ENGAGEMENT.arrow_schema([f"best_rank_{c}" for c in channels])
    written = pq.read_schema(path)
    got = [(f.name, f.type) for f in written]
    want = [(f.name, f.type) for f in expected]
    if got != want:
        raise AssertionError(f"{target}: engagement columns {got} differ from the schema's {want}")
