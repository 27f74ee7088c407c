"""Teacher training: imbalance weights, loss, temperature scaling, and the exported repository."""

import json
from pathlib import Path

import numpy as np
import torch

from unisup.teachers.model import grade_probabilities
from unisup.teachers.training import class_weights, fit_temperature, ordinal_loss


def test_class_weights_favour_rare_grades():
    grades = np.array([0] * 80 + [1] * 5 + [2] * 5 + [3] * 10)
    weights = class_weights(grades, 4, power=1.0)
    assert weights[1] == weights[2] > weights[3] > weights[0]
    assert abs(weights[grades].mean() - 1.0) < 1e-9
    assert np.allclose(class_weights(grades, 4, power=0.0), 1.0)


def test_ordinal_loss_prefers_the_right_side_of_each_threshold():
    grades = torch.tensor([0, 3])
    right = torch.tensor([[-5.0, -6.0, -7.0], [7.0, 6.0, 5.0]])
    assert ordinal_loss(right, grades, torch.ones(2)) < ordinal_loss(-right, grades, torch.ones(2))


def test_temperature_scaling_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 1)) - np.array([-2.0, 0.0, 2.0])
    probs = grade_probabilities(torch.from_numpy(logits / 2.5)).numpy()
    grades = np.array([rng.choice(4, p=p / p.sum()) for p in probs])
    assert abs(fit_temperature(logits.astype(np.float32), grades) - 2.5) < 0.25


def test_train_teachers_exports_a_triton_repository(trained_teachers, teacher_config):
    repository = Path(trained_teachers["repository"])
    assert set(trained_teachers["stages"]) == {"fast", "precise"}
    for stage in teacher_config.teachers.stages:
        record = trained_teachers["stages"][stage.name]
        assert record["train_pairs"] == 160 and record["validation_pairs"] == 80
        assert record["temperature"] > 0 and record["steps"] <= stage.max_steps
        assert record["validation_nll_calibrated"] <= record["validation_nll_uncalibrated"] + 1e-6
        config = (repository / stage.name / "config.pbtxt").read_text()
        assert f'name: "{stage.name}"' in config and "dynamic_batching {" in config
        assert "max_batch_size: 256" in config and "instance_group [ { count: 1 kind: KIND_CPU } ]" in config
        assert "dims: [ 4 ]" in config
        version = repository / stage.name / "1"
        assert (version / "model.py").exists()
        saved = json.loads((version / "teacher" / "teacher.json").read_text())
        assert saved["item_fields"] == stage.item_fields and saved["num_grades"] == 4
    layers = {
        s: json.loads((repository / s / "1" / "teacher" / "teacher.json").read_text())["num_layers"]
        for s in ("fast", "precise")
    }
    assert layers == {"fast": 1, "precise": 2}
