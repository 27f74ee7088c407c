"""WANDS and ESCI layouts map into the catalog and judgments schemas (handwritten rows)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unisup.data.public import load_esci, load_wands
from unisup.schemas import DataValidationError

WANDS_PRODUCTS = (
    "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\tproduct_features\trating_count\taverage_rating\treview_count\n"
    "0\tsolid wood platform bed\tBeds\tFurniture / Bedroom Furniture / Beds\ta good bed\tcolor : white|material: pine\t15\t4.5\t15\n"
    "1\tall-clad 7 qt . slow cooker\tSlow Cookers\tKitchen / Small Appliances\t\t\t\t\t\n"
)
WANDS_QUERIES = "query_id\tquery\tquery_class\n0\tsalon chair\tMassage Chairs\n1\tslow cooker\tSlow Cookers\n"
WANDS_LABELS = "id\tquery_id\tproduct_id\tlabel\n0\t0\t0\tIrrelevant\n1\t1\t1\tExact\n2\t1\t0\tPartial\n"


@pytest.fixture
def wands_dir(tmp_path):
    for name, text in (("product.csv", WANDS_PRODUCTS), ("query.csv", WANDS_QUERIES), ("label.csv", WANDS_LABELS)):
        (tmp_path / name).write_text(text)
    return tmp_path


def test_wands(wands_dir):
    catalog, judgments = load_wands(wands_dir)
    assert catalog["product_id"].to_pylist() == ["0", "1"]
    assert catalog["category"].to_pylist()[0] == "Furniture / Bedroom Furniture / Beds"
    assert '"material": "pine"' in catalog["attributes"].to_pylist()[0]
    assert judgments.select(["query", "product_id", "rating"]).to_pylist() == [
        {"query": "salon chair", "product_id": "0", "rating": 0},
        {"query": "slow cooker", "product_id": "1", "rating": 3},
        {"query": "slow cooker", "product_id": "0", "rating": 1},
    ]


def test_wands_unknown_label(wands_dir):
    (wands_dir / "label.csv").write_text("id\tquery_id\tproduct_id\tlabel\n0\t0\t0\tMaybe\n")
    with pytest.raises(DataValidationError, match=r"label.csv\): column 'label', row 1.*Maybe"):
        load_wands(wands_dir)


def test_esci(tmp_path):
    examples = pa.table(
        {
            "example_id": [0, 1, 2, 3],
            "query": ["revent 80 cfm", "revent 80 cfm", "usb c hub", "usb c hub"],
            "query_id": [0, 0, 1, 1],
            "product_id": ["B0", "B1", "B2", "B9"],
            "product_locale": ["us", "us", "us", "jp"],
            "esci_label": ["E", "I", "S", "C"],
            "small_version": [1, 1, 1, 1],
            "large_version": [1, 1, 1, 1],
            "split": ["train"] * 4,
        }
    )
    products = pa.table(
        {
            "product_id": ["B0", "B1", "B2", "B9"],
            "product_title": ["Panasonic fan", "Hat", "Anker USB-C hub", "jp item"],
            "product_description": [None, "a hat", None, None],
            "product_bullet_point": ["quiet", None, "4 ports", None],
            "product_brand": ["Panasonic", None, "Anker", None],
            "product_color": ["white", None, None, None],
            "product_locale": ["us", "us", "us", "jp"],
        }
    )
    pq.write_table(examples, tmp_path / "shopping_queries_dataset_examples.parquet")
    pq.write_table(products, tmp_path / "shopping_queries_dataset_products.parquet")
    catalog, judgments = load_esci(tmp_path)
    assert sorted(catalog["product_id"].to_pylist()) == ["B0", "B1", "B2"]
    assert dict(zip(catalog["product_id"].to_pylist(), catalog["description"].to_pylist()))["B0"] == "quiet"
    assert dict(zip(judgments["product_id"].to_pylist(), judgments["rating"].to_pylist())) == {
        "B0": 3,
        "B1": 0,
        "B2": 2,
    }


def test_missing_layout_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="product.csv is missing"):
        load_wands(tmp_path)
