"""What each kind of stage reads."""

import json

from unisup.data.dataset import load_dataset
from unisup.teachers.stages import stage_item_texts


def test_feature_and_stacked_stages_read_item_records(teacher_config):
    dataset = load_dataset(teacher_config.data)
    stages = {s.name: s for s in teacher_config.teachers.stages}
    ids = dataset.catalog["product_id"].to_pylist()[:3]
    for name in ("features", "precise"):
        assert all(json.loads(t)["title"] for t in stage_item_texts(dataset.catalog, stages[name], ids).values())
    assert not stage_item_texts(dataset.catalog, stages["fast"], ids)[ids[0]].startswith("{")
