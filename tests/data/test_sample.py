import json

from unisup.config import load_config
from unisup.data.sample import load_dataset, make_split, read_split


def test_split_is_deterministic_disjoint_and_by_query():
    queries = [f"q{i}" for i in range(40)] * 3
    a = make_split(queries, seed=1, fractions=[0.5, 0.25, 0.25])
    assert a == make_split(list(reversed(queries)), seed=1, fractions=[0.5, 0.25, 0.25])
    assert [len(a[k]) for k in ("train", "validation", "test")] == [20, 10, 10]
    assert not set(a["train"]) & set(a["test"]) and not set(a["validation"]) & set(a["test"])
    assert a != make_split(queries, seed=2, fractions=[0.5, 0.25, 0.25])


def test_bundled_sample_and_its_split():
    cfg = load_config("local")
    dataset = load_dataset(cfg.data)
    assert dataset.catalog.num_rows == 19406 and dataset.judgments.num_rows == 3019
    split = read_split(cfg.data.split_uri)
    assert sum(len(v) for v in split.values()) == 108
    stored = json.loads(open(cfg.data.split_uri).read())
    assert split == make_split(dataset.judgments["query"].to_pylist(), stored["seed"], stored["fractions"])
    qrels = dataset.qrels("test")
    assert set(qrels) == set(split["test"])
    assert dataset.judgments_for("test").num_rows == sum(len(v) for v in qrels.values())


def test_attribution_travels_with_the_sample():
    from tests.conftest import SAMPLE

    text = (SAMPLE / "ATTRIBUTION.md").read_text()
    assert "Open Icecat" in text and "Chorus" in text
