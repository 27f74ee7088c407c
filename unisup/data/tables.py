"""Reading and writing artifact tables (Parquet or CSV, local or gs://) with validation."""

from __future__ import annotations

import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from unisup import storage
from unisup.schemas import ARTIFACTS, DataValidationError, RuleContext, Validated, validate


def _artifact_name(artifact: str) -> str:
    if artifact not in ARTIFACTS:
        raise KeyError(f"unknown artifact {artifact!r}; known: {', '.join(ARTIFACTS)}")
    return artifact


def read_raw(uri: str, artifact: str) -> pa.Table:
    """Read a Parquet or CSV file as it is (CSV columns as text), with clear errors. A name
    without a suffix (a pipeline artifact's path) is read as Parquet.

    Raises :class:`DataValidationError` for an empty file, a non-UTF-8 line (naming
    the line) or a file that is not Parquet/CSV.
    """
    _artifact_name(artifact)
    data = storage.read_bytes(uri)
    if not data.strip():
        raise DataValidationError(artifact, uri, "the file is empty")
    if str(uri).endswith(".parquet") or "." not in str(uri).rstrip("/").rsplit("/", 1)[-1]:
        try:
            # single-threaded: an Arrow thread releasing Python bytes while the interpreter
            # exits aborts the process (exit 134); bench/extraction_exit.py measures it
            return pq.read_table(io.BytesIO(data), use_threads=False, pre_buffer=False)
        except pa.ArrowInvalid as err:
            raise DataValidationError(artifact, uri, f"not a readable Parquet file: {err}") from None
    if not str(uri).endswith((".csv", ".tsv")):
        raise DataValidationError(artifact, uri, "unsupported file type; expected .parquet, .csv or .tsv")
    return parse_csv(data, artifact, uri, delimiter="\t" if str(uri).endswith(".tsv") else ",")


def parse_csv(data: bytes, artifact: str, source: str, delimiter: str = ",") -> pa.Table:
    """Parse CSV bytes with every column as text; errors name the file and line."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        for number, line in enumerate(data.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataValidationError(
                    artifact,
                    source,
                    f"line {number} is not valid UTF-8 (byte {line[err.start : err.start + 1]!r} at "
                    f"column {err.start + 1}); re-encode the file as UTF-8",
                    rows=[number - 1],
                    rule="encoding",
                ) from None
    header = data.split(b"\n", 1)[0].decode("utf-8").strip("\r")
    names = [n.strip().strip('"') for n in header.split(delimiter)]
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True
            ),
        )
    except pa.ArrowInvalid as err:
        raise DataValidationError(artifact, source, f"malformed CSV: {err}") from None


def read_artifact(
    uri: str,
    artifact: str,
    context: RuleContext | None = None,
    strict: bool = True,
) -> Validated:
    """Read and validate one artifact file; see :func:`unisup.schemas.validate`."""
    return validate(read_raw(uri, artifact), artifact, uri, context, strict)


def write_table(table: pa.Table, uri: str) -> None:
    """Write a table as zstd Parquet to a local path or gs:// URI."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(uri, buffer.getvalue())


def read_table(uri: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Read a Parquet file written by :func:`write_table` (no validation)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=list(columns) if columns else None)
