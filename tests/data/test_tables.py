"""Bad input files get a clear error naming the file, the column and the row."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unisup.data.dataset import load_catalog, load_judgments
from unisup.data.tables import read_artifact, read_table, write_table
from unisup.schemas import DataValidationError

CATALOG_CSV = "product_id,title,brand,price\n1,Sony TV,Sony,499.0\n2,USB hub,Anker,19.5\n3,Laptop,HP,900\n"


@pytest.fixture
def catalog_file(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(CATALOG_CSV)
    return path


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_catalog_csv_loads(catalog_file):
    catalog = load_catalog(str(catalog_file)).accepted
    assert catalog["product_id"].to_pylist() == ["1", "2", "3"]
    assert catalog["price"].to_pylist() == [499.0, 19.5, 900.0]


def test_missing_column(tmp_path):
    path = write(tmp_path, "products.csv", "product_id,brand\n1,Sony\n")
    with pytest.raises(DataValidationError, match=r"catalog \(.*products.csv\): column 'title'.*missing"):
        load_catalog(path)


def test_wrong_type(tmp_path):
    path = write(tmp_path, "products.csv", "product_id,title,price\n1,TV,499\n2,Hub,cheap\n")
    with pytest.raises(DataValidationError, match=r"products.csv\): column 'price', row 2 \[rule: type\].*'cheap'"):
        load_catalog(path)


def test_duplicate_product_ids(tmp_path):
    path = write(tmp_path, "products.csv", "product_id,title\n1,TV\n2,Hub\n1,Laptop\n")
    with pytest.raises(DataValidationError, match=r"column 'product_id', row 3 \[rule: product_id_unique\]"):
        load_catalog(path)


def test_judgments_naming_unknown_products(tmp_path, catalog_file):
    catalog = load_catalog(str(catalog_file)).accepted
    path = write(tmp_path, "judgments.csv", "query,product_id,rating\ntv,1,3\ntv,42,0\n")
    with pytest.raises(
        DataValidationError, match=r"judgments.csv\): column 'product_id', row 2 \[rule: product_known\]"
    ):
        load_judgments(path, catalog, num_grades=4)


def test_rating_outside_the_scale(tmp_path, catalog_file):
    catalog = load_catalog(str(catalog_file)).accepted
    path = write(tmp_path, "judgments.csv", "query,product_id,rating\ntv,1,3\ntv,2,4\nhub,2,-1\n")
    with pytest.raises(DataValidationError, match=r"column 'rating', rows 2, 3 \[rule: rating_in_scale\]"):
        load_judgments(path, catalog, num_grades=4)


@pytest.mark.parametrize("content", ["", "  \n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path, "judgments.csv", content)
    with pytest.raises(DataValidationError, match=r"judgments \(.*judgments.csv\): the file is empty"):
        read_artifact(path, "judgments")


def test_header_only_file(tmp_path):
    path = write(tmp_path, "judgments.csv", "query,product_id,rating\n")
    with pytest.raises(DataValidationError, match="header but no rows"):
        read_artifact(path, "judgments")


def test_non_utf8_line(tmp_path):
    path = write(tmp_path, "judgments.csv", b"query,product_id,rating\ntv,1,3\ncaf\xe9 machine,2,1\n")
    with pytest.raises(
        DataValidationError, match=r"judgments.csv\), row 2 \[rule: encoding\]: line 3 is not valid UTF-8"
    ):
        read_artifact(path, "judgments")


def test_unreadable_parquet(tmp_path):
    path = write(tmp_path, "products.parquet", b"not parquet at all")
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        load_catalog(path)


def test_parquet_roundtrip(tmp_path):
    table = pa.table({"a": [1, 2]})
    write_table(table, str(tmp_path / "x" / "t.parquet"))
    assert read_table(str(tmp_path / "x" / "t.parquet")).equals(table)
    assert pq.read_metadata(tmp_path / "x" / "t.parquet").row_group(0).column(0).compression == "ZSTD"


def test_reading_parquet_never_aborts_the_interpreter_at_exit(tmp_path):
    """A Parquet read from Python bytes on Arrow threads aborted about 1 process exit in 3
    (exit 134); each of these fresh processes reads a table and must exit 0."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": list(range(200_000)), "b": [str(i) for i in range(200_000)]}), path)
    script = f"from unisup.data.tables import read_raw; assert read_raw({str(path)!r}, 'engagement').num_rows == 200000"
    codes = [subprocess.run([sys.executable, "-c", script], capture_output=True).returncode for _ in range(8)]
    assert codes == [0] * 8
