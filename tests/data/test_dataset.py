import json

import pytest

from unisup.config import load_config
from unisup.data.dataset import load_dataset, make_split, read_split
from unisup.errors import InputError


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


@pytest.fixture()
def sample_split():
    cfg = load_config("local")
    return cfg, json.loads(open(cfg.data.split_uri).read())


def _run_with_split(tmp_path, payload, capsys) -> str:
    """Load the dataset through the CLI's channels stage with a split file; returns stderr."""
    from unisup.cli import main

    path = tmp_path / "split.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    code = main(["channels", "-o", f"data.split_uri={path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("unisup: error: ") and str(path) in err and "Traceback" not in err
    return err


def test_a_split_that_leaks_test_queries_into_train_is_refused(tmp_path, sample_split, capsys):
    _, split = sample_split
    leaked = dict(split, train=split["train"] + split["test"][:2])
    err = _run_with_split(tmp_path, leaked, capsys)
    assert "2 queries are in both 'train' and 'test' (leakage)" in err and repr(split["test"][0]) in err
    with pytest.raises(InputError, match="'validation' and 'test'"):
        (tmp_path / "s.json").write_text(json.dumps(dict(split, validation=split["test"][:1])))
        read_split(str(tmp_path / "s.json"))


def test_a_split_with_unknown_queries_is_refused(tmp_path, sample_split, capsys):
    _, split = sample_split
    err = _run_with_split(tmp_path, dict(split, test=split["test"] + ["no such query"]), capsys)
    assert "1 split queries have no judgments" in err and "'no such query'" in err


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"train": [', "not valid JSON"),
        ('["a", "b"]', "must be a JSON object"),
        ({"train": [], "validation": []}, "lacks test"),
        ({"train": [], "validation": [], "test": "a query"}, "'test' must be a list of query strings, got str"),
        ({"train": [1], "validation": [], "test": []}, "'train' must be a list of query strings"),
    ],
)
def test_malformed_split_files_are_one_line_errors(tmp_path, capsys, payload, message):
    assert message in _run_with_split(tmp_path, payload, capsys)
