"""The SQL engines the log extraction runs its phases on: DuckDB in this process (the
default), or Spark (``local[N]`` in this process, or a cluster's master).

The extraction's SQL is written once, in DuckDB's dialect, with ``$name`` parameters. DuckDB
runs it as written; :func:`to_spark_sql` transpiles it with sqlglot for Spark, whose named
parameters (``:name``) receive the same values: no value becomes SQL text on either engine.
Both engines offer the same few operations (:class:`DuckDBEngine`, :class:`SparkEngine`):
run a query, keep its result as a named table or view, register an Arrow table or a group of
Parquet files (with each row's file and row number), write a query to one Parquet file.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unisup import storage
from unisup.config import ConfigError, ExtractionConfig

ENGINES = ("duckdb", "spark")
SUBMIT_MODES = ("in-process", "k8s-operator")


def check_engine(cfg: ExtractionConfig) -> None:
    """``extraction.engine`` is one of :data:`ENGINES`, and Spark's settings are usable."""
    if cfg.engine not in ENGINES:
        raise ConfigError(f"extraction.engine={cfg.engine!r}: expected one of {', '.join(ENGINES)}")
    if cfg.spark_shuffle_partitions < 1:
        raise ConfigError(f"extraction.spark_shuffle_partitions={cfg.spark_shuffle_partitions!r}: expected at least 1")
    if cfg.spark_submit not in SUBMIT_MODES:
        raise ConfigError(f"extraction.spark_submit={cfg.spark_submit!r}: expected one of {', '.join(SUBMIT_MODES)}")
    if not cfg.spark_master.strip():
        raise ConfigError("extraction.spark_master='': expected a Spark master such as local[2] or spark://host:7077")


# ---------------------------------------------------------------- DuckDB


class DuckDBEngine:
    """The extraction's operations on one DuckDB connection."""

    def __init__(self, con):
        self.con = con

    def run(self, sql: str, params: dict | None = None) -> list[tuple]:
        return self.con.execute(sql, params or {}).fetchall()

    def table(self, name: str, sql: str, params: dict | None = None) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}", params or {})

    def view(self, name: str, sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")

    def arrow_table(self, name: str, table: pa.Table) -> None:
        self.con.register(f"{name}_arrow", table)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
        self.con.unregister(f"{name}_arrow")

    def parquet_view(self, name: str, paths: list[str]) -> None:
        """``name``: the rows of the files, with ``filename`` and ``file_row_number`` (from 0)."""
        relation = self.con.read_parquet(paths, filename=True, file_row_number=True, hive_partitioning=False)
        relation.to_view(name)

    @staticmethod
    def reader_filename(path: str) -> str:
        """The ``filename`` that :meth:`parquet_view` gives the rows of the file at ``path``."""
        return path

    def write_parquet(self, sql: str, params: dict | None, out: str) -> None:
        """The query's rows, in its order, as one Parquet file at the local path ``out``."""
        self.con.execute(f"COPY ({sql}) TO $out (FORMAT PARQUET, COMPRESSION ZSTD)", (params or {}) | {"out": out})


@contextmanager
def duckdb_engine(cfg: ExtractionConfig, tmp: str) -> Iterator[DuckDBEngine]:
    """A DuckDB engine with the config's memory limit and threads, spilling under ``tmp``."""
    import duckdb

    options = {"memory_limit": cfg.duckdb_memory_limit, "threads": cfg.duckdb_threads}
    con = duckdb.connect(
        config=options | {"temp_directory": str(Path(tmp) / "spill"), "preserve_insertion_order": False}
    )
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield DuckDBEngine(con)
    finally:
        con.close()


# ---------------------------------------------------------------- Spark


def _spark_try(expression):
    """sqlglot transform: DuckDB's ``TRY(decode(bytes))`` (NULL where the bytes are not UTF-8)
    as Spark's ``try_validate_utf8(CAST(bytes AS STRING))``."""
    from sqlglot import exp

    if isinstance(expression, exp.Try) and isinstance(expression.this, exp.Decode):
        text = exp.Cast(this=expression.this.this, to=exp.DataType.build("STRING"))
        return exp.Anonymous(this="try_validate_utf8", expressions=[text])
    return expression


@functools.lru_cache(maxsize=256)
def to_spark_sql(sql: str) -> str:
    """A query of the extraction (DuckDB dialect, ``$name`` parameters) in Spark SQL
    (``:name`` parameters)."""
    import sqlglot

    (tree,) = sqlglot.parse(sql, read="duckdb")
    return tree.transform(_spark_try).sql(dialect="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)


class SparkEngine:
    """The extraction's operations on a Spark session; tables are kept (persisted) until
    :meth:`close` drops them with the views."""

    def __init__(self, spark, work: str, shared_work: str = ""):
        self.spark = spark
        self.work = work
        self.shared_work = shared_work
        self.names: list[str] = []
        self.kept: list = []

    def frame(self, sql: str, params: dict | None = None):
        return self.spark.sql(to_spark_sql(sql), args=params or {})

    def run(self, sql: str, params: dict | None = None) -> list[tuple]:
        return [tuple(row) for row in self.frame(sql, params).collect()]

    def _register(self, name: str, frame) -> None:
        frame.createOrReplaceTempView(name)
        self.names.append(name)

    def table(self, name: str, sql: str, params: dict | None = None) -> None:
        from pyspark import StorageLevel

        frame = self.frame(sql, params).persist(StorageLevel.MEMORY_AND_DISK)
        self.kept.append(frame)
        self._register(name, frame)

    def view(self, name: str, sql: str) -> None:
        self._register(name, self.frame(sql))

    def arrow_table(self, name: str, table: pa.Table) -> None:
        self._register(name, self.spark.createDataFrame(table))

    def parquet_view(self, name: str, paths: list[str]) -> None:
        """``name``: the rows of the files, with ``filename`` and ``file_row_number`` (from 0)."""
        from pyspark.sql import functions as F

        frame = self.spark.read.parquet(*[p if "://" in p else str(Path(p).absolute()) for p in paths])
        self._register(
            name,
            frame.select(
                "*",
                F.col("_metadata.file_path").alias("filename"),
                F.col("_metadata.row_index").alias("file_row_number"),
            ),
        )

    def reader_filename(self, path: str) -> str:
        """The file's URI as Spark's reader names it in ``_metadata.file_path``: the path
        qualified by its Hadoop file system."""
        jvm = self.spark.sparkContext._jvm
        hadoop_path = jvm.org.apache.hadoop.fs.Path(path if "://" in path else str(Path(path).absolute()))
        system = hadoop_path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())
        uri = system.makeQualified(hadoop_path).toUri().toString()
        return (
            "file:/" + uri.removeprefix("file:///") if uri.startswith("file:///") else uri
        )  # a local file: no authority

    def write_parquet(self, sql: str, params: dict | None, out: str) -> None:
        """The query's rows, in its order, as one Parquet file at the local path ``out``: Spark
        writes its parts (under ``shared_work`` when given: a folder every executor reaches,
        else under ``work``), which are then joined in part order."""
        if self.shared_work:
            parts_dir = storage.join(self.shared_work, f"parts-{uuid.uuid4().hex}")
        else:
            parts_dir = tempfile.mkdtemp(prefix="parts-", dir=self.work)
        frame = self.frame(sql, params)
        frame.write.mode("overwrite").option("compression", "zstd").parquet(parts_dir)
        parts = sorted(u for u in storage.list_prefix(parts_dir) if Path(u).name.startswith("part-"))
        schema = self._arrow_schema(frame, parts)
        with pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for part in parts:
                with storage.local_copy(part) as path:
                    for batch in pq.ParquetFile(path).iter_batches():
                        writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))

    @staticmethod
    def _arrow_schema(frame, parts: list[str]) -> pa.Schema:
        """The Arrow schema of the parts Spark wrote (that of the first), or of the frame when none."""
        if parts:
            with storage.local_copy(parts[0]) as path:
                return pq.read_schema(path).remove_metadata()
        from pyspark.sql.pandas.types import to_arrow_schema

        return to_arrow_schema(frame.schema, timezone="UTC")

    def close(self) -> None:
        for frame in self.kept:
            frame.unpersist()
        for name in self.names:
            self.spark.catalog.dropTempView(name)


def start_spark_session(cfg: ExtractionConfig, work: str):
    """A Spark session for ``cfg.spark_master``, its scratch space under ``work``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "extraction.engine='spark' needs pyspark: pip install 'unisup[spark]' (and a Java 17 runtime)"
        ) from None
    builder = SparkSession.builder.master(cfg.spark_master).appName("unisup-extract-logs")
    for key, value in spark_conf(cfg, work).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as err:  # the JVM did not start: no Java, or a bad master
        raise ConfigError(f"extraction.spark_master={cfg.spark_master!r}: Spark did not start ({err})") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_conf(cfg: ExtractionConfig, work: str) -> dict[str, str]:
    """The Spark settings the extraction relies on (UTC, microsecond Parquet timestamps, ANSI
    SQL) and the config's sizes; scratch and warehouse folders under ``work``."""
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.ansi.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.shuffle.partitions": str(cfg.spark_shuffle_partitions),
        "spark.driver.memory": cfg.spark_driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.local.dir": str(Path(work) / "spark-local"),
        "spark.sql.warehouse.dir": str(Path(work) / "spark-warehouse"),
    }


@contextmanager
def spark_session(cfg: ExtractionConfig) -> Iterator:
    """The active Spark session when there is one (kept running), else a new one for the
    block, stopped after it."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        SparkSession = None  # noqa: N806 (reported by start_spark_session)
    active = SparkSession.getActiveSession() if SparkSession else None
    if active is not None:
        yield active
        return
    with tempfile.TemporaryDirectory(prefix="unisup-spark-") as work:
        spark = start_spark_session(cfg, work)
        try:
            yield spark
        finally:
            spark.stop()


@contextmanager
def spark_engine(cfg: ExtractionConfig, tmp: str) -> Iterator[SparkEngine]:
    """A Spark engine on the active (else a new) session, its parts written under ``tmp``."""
    with spark_session(cfg) as spark:
        engine = SparkEngine(spark, tmp, cfg.spark_work_uri)
        try:
            yield engine
        finally:
            engine.close()


@contextmanager
def engine_session(cfg: ExtractionConfig) -> Iterator[None]:
    """Keep one Spark session for the block when the engine is Spark (several extractions
    then share its start-up); nothing for DuckDB."""
    with spark_session(cfg) if cfg.engine == "spark" else contextlib.nullcontext():
        yield


def open_engine(cfg: ExtractionConfig, tmp: str):
    """The config's engine (a context manager), scratch under ``tmp``."""
    return spark_engine(cfg, tmp) if cfg.engine == "spark" else duckdb_engine(cfg, tmp)
