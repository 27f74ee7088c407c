"""The feature stage: pair features on catalog statistics, the ordinal feature teacher, stacking."""

import json

import numpy as np
import pytest

from unisup.channels import BM25Channel
from unisup.data.catalog import item_records, item_texts
from unisup.data.dataset import load_dataset
from unisup.teachers.features import FEATURE_NAMES, FeatureTeacher, featurizer_for
from unisup.teachers.model import OrdinalCrossEncoder, load_teacher
from unisup.teachers.training import class_weights, judged_pairs


@pytest.fixture(scope="module")
def dataset(teacher_config):
    return load_dataset(teacher_config.data)


@pytest.fixture(scope="module")
def featurizer(dataset, teacher_config):
    return featurizer_for(dataset.catalog, teacher_config.channels)


@pytest.fixture(scope="module")
def records(dataset):
    return dict(zip(dataset.catalog["product_id"].to_pylist(), item_records(dataset.catalog, attributes=3)))


def column(name):
    return FEATURE_NAMES.index(name)


def test_bm25_feature_is_the_bm25_channel_score(dataset, featurizer, records):
    ids = dataset.catalog["product_id"].to_pylist()
    channel = BM25Channel(ids, item_texts(dataset.catalog))
    for query in ["hp toner cartridge black", "usb cable", "laptop bag"]:
        ranking = channel.search([query], 8)[0]
        features = featurizer.features([query] * len(ranking), [records[i] for i, _ in ranking])
        np.testing.assert_allclose(features[:, column("bm25")], [s for _, s in ranking], rtol=1e-5)
        assert (features[:, column("bm25_share")] <= 1.0 + 1e-6).all()


def test_features_of_a_pair_do_not_depend_on_the_other_pairs(featurizer, records):
    items = list(records.values())[:6]
    queries = ["usb cable", "laptop", "hp toner", "usb cable", "mouse", "laptop"]
    together = featurizer.features(queries, items)
    alone = np.vstack([featurizer.features([q], [i]) for q, i in zip(queries, items)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_an_item_outside_the_catalog_is_encoded_and_matched_field_by_field(featurizer):
    new = json.dumps({"title": "Acme usb cable 2 m", "brand": "Acme", "description": "", "product_type": "Cable"})
    other = json.dumps({"title": "Acme usb cable 2 m", "brand": "Zeta", "description": "", "product_type": ""})
    rows = featurizer.features(["acme usb cable", "acme usb cable"], [new, other])
    expected = featurizer.encoder.encode(["acme usb cable"])[0] @ featurizer.encoder.encode(["Acme usb cable 2 m"])[0]
    assert rows[0, column("cosine")] == pytest.approx(float(expected), abs=1e-5)
    assert rows[0, column("title_coverage")] == pytest.approx(1.0) and rows[0, column("type_coverage")] > 0
    assert rows[0, column("brand_named")] == 1.0 and rows[1, column("brand_named")] == 0.0
    assert rows[0, column("has_type")] == 1.0 and rows[1, column("has_type")] == 0.0
    with pytest.raises(ValueError, match="not a JSON item record"):
        featurizer.features(["usb"], ["a plain text"])


def fit_teacher(dataset, featurizer, records, seed=0):
    queries, items, grades = judged_pairs(dataset, "train")
    x = featurizer.features(queries, [records[i] for i in items])
    weights = class_weights(grades, 4, 0.5)[grades]
    return FeatureTeacher.fit(featurizer, x, grades, 4, weights, l2=0.01, seed=seed), x, grades


def test_feature_teacher_is_deterministic_ordinal_and_better_than_chance(dataset, featurizer, records):
    teacher, x, grades = fit_teacher(dataset, featurizer, records)
    again, _, _ = fit_teacher(dataset, featurizer, records, seed=3)
    np.testing.assert_array_equal(teacher.logits_of_features(x), again.logits_of_features(x))
    logits = teacher.logits_of_features(x)
    assert (np.diff(logits, axis=1) <= 1e-6).all()  # P(grade > k) never rises with k
    expected = teacher.predict_probs(*zip(*[(q, records[i]) for q, i in zip(*judged_pairs(dataset, "train")[:2])]))
    assert np.allclose(expected.sum(1), 1.0, atol=1e-5)
    correlation = np.corrcoef(expected @ np.arange(4), grades)[0, 1]
    assert correlation > 0.3


def test_feature_teacher_round_trips_and_a_stacked_teacher_starts_as_it(
    dataset, featurizer, records, tiny_encoder_path, tmp_path
):
    teacher, _, _ = fit_teacher(dataset, featurizer, records)
    teacher.temperature = 1.3
    loaded = load_teacher(teacher.save(tmp_path / "features"))
    assert isinstance(loaded, FeatureTeacher)
    queries = ["usb cable", "laptop", "toner"]
    items = list(records.values())[:3]
    np.testing.assert_allclose(loaded.predict_probs(queries, items), teacher.predict_probs(queries, items), atol=1e-6)
    stacked = OrdinalCrossEncoder.from_encoder(tiny_encoder_path, 4, 32, item_fields=["title"])
    stacked.stack_on(loaded)
    np.testing.assert_allclose(
        stacked.cumulative_logits(queries, items), loaded.cumulative_logits(queries, items), atol=1e-5
    )
    reloaded = load_teacher(stacked.save(tmp_path / "stacked"))
    np.testing.assert_allclose(
        reloaded.cumulative_logits(queries, items), stacked.cumulative_logits(queries, items), atol=1e-5
    )
