import pyarrow as pa
import pytest

from unisup.channels import (
    AttributeChannel,
    BM25Channel,
    DenseChannel,
    FusedChannel,
    catalog_facets,
    facet_tokens,
    mine_product_types,
    reciprocal_rank_fusion,
)
from unisup.encoders import DenseEncoder

IDS = ["tv", "hub", "toner", "laptop"]
TEXTS = [
    "Samsung 55 inch 4K smart TV television",
    "Anker 4-port USB 3.0 hub for laptops",
    "HP black toner cartridge for laser printers",
    "Lenovo ThinkPad laptop 14 inch notebook",
]


def test_dense_channel_ranks_by_cosine_through_the_cache(tiny_encoder_path, tmp_path):
    encoder = DenseEncoder(tiny_encoder_path, max_length=16, batch_size=3)
    channel = DenseChannel(IDS, TEXTS, encoder, cache_dir=tmp_path)
    (ranking,) = channel.search([TEXTS[2]], k=4)
    assert ranking[0][0] == "toner" and len(ranking) == 4
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_bm25_ranks_lexical_matches():
    channel = BM25Channel(IDS, TEXTS)
    (hub_ranking,), (none,) = channel.search(["usb hub"], k=3), channel.search(["zzzz"], k=3)
    assert hub_ranking[0][0] == "hub" and hub_ranking[0][1] > 0
    assert none == []  # no term in the vocabulary: nothing retrieved rather than arbitrary items
    laptop = [item for item, _ in channel.search(["laptops"], k=4)[0]]
    assert sorted(laptop) == ["hub", "laptop"]  # stemming: "laptops" matches "laptop"


def test_reciprocal_rank_fusion_by_hand():
    a = [[("x", 9.0), ("y", 5.0)]]
    b = [[("y", 0.9), ("z", 0.8)]]
    (fused,) = reciprocal_rank_fusion([a, b], k=1)
    scores = dict(fused)
    assert scores == pytest.approx({"y": 1 / 3 + 1 / 2, "x": 1 / 2, "z": 1 / 3})
    assert [item for item, _ in fused] == ["y", "x", "z"]


def test_fused_channel_depth():
    bm25 = BM25Channel(IDS, TEXTS)
    fused = FusedChannel([bm25, bm25], k=60)
    (ranking,) = fused.search(["laptop hub"], k=1)
    assert len(ranking) == 1


# ---------------------------------------------------------------- attribute match


def _catalog() -> pa.Table:
    rows = [
        ("1", "HP 83 toner cartridge Original Black", "HP", '{"product_colour": "Black"}'),
        ("2", "Canon C-EXV16 toner cartridge Yellow", "Canon", '{"product_colour": "Yellow"}'),
        ("3", "Xerox 106R01433 toner cartridge Cyan", "Xerox", "{}"),
        ("4", "HP LaserJet usb cable Black 2 m", "HP", '{"product_colour": "Black"}'),
        ("5", "C2G usb cable White 3 m", "C2G", '{"product_colour": "White"}'),
        ("6", "StarTech.com usb cable Grey", "StarTech.com", None),
    ]
    names = ["product_id", "title", "brand", "attributes"]
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def test_facet_tokens_fold_plurals():
    assert facet_tokens("Toner Cartridges, USB-cables") == ["toner", "cartridge", "usb-cable"]


def test_product_types_need_several_brands():
    catalog = _catalog()
    types = mine_product_types(catalog["title"].to_pylist(), catalog["brand"].to_pylist(), size=10)
    assert "toner cartridge" in types and "usb cable" in types
    assert "laserjet" not in types  # one brand only: a product line, not a type


def test_attribute_channel_ranks_brand_and_type_matches_first():
    catalog = _catalog()
    types = mine_product_types(catalog["title"].to_pylist(), catalog["brand"].to_pylist(), size=10)
    facets = catalog_facets(catalog, types, ["product_colour"])
    assert facets[0] == {"brand": ["hp"], "type": ["toner cartridge"], "attribute": ["black"]}
    channel = AttributeChannel(catalog["product_id"].to_pylist(), facets, {"type": 2.0, "brand": 1.0, "attribute": 0.5})
    hp_toner, usb, nothing = channel.search(["hp toner cartridges", "black usb cable", "garden hose"], k=10)
    assert [i for i, _ in hp_toner][:1] == ["1"] and {i for i, _ in hp_toner} == {"1", "2", "3", "4"}
    assert [i for i, _ in usb][:1] == ["4"] and {i for i, _ in usb[:3]} == {"4", "5", "6"}
    assert nothing == []
    assert len(channel.search(["hp toner cartridge"], k=2)[0]) == 2


def test_popularity_breaks_ties():
    catalog = _catalog()
    facets = catalog_facets(catalog, ["usb cable"], [])
    channel = AttributeChannel(catalog["product_id"].to_pylist(), facets, {"type": 1.0}, popularity=[0, 0, 0, 1, 3, 2])
    assert [i for i, _ in channel.search(["usb cable"], k=3)[0]] == ["5", "6", "4"]
