"""Teacher training: imbalance weights, loss, temperature scaling, and the exported repository."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unisup.config import TeacherStageConfig, load_config
from unisup.teachers.ordinal import grade_probabilities
from unisup.teachers.training import (
    check_distillation,
    class_weights,
    distillation_loss,
    fit_temperature,
    train_teachers,
)


def test_class_weights_favour_rare_grades():
    grades = np.array([0] * 80 + [1] * 5 + [2] * 5 + [3] * 10)
    weights = class_weights(grades, 4, power=1.0)
    assert weights[1] == weights[2] > weights[3] > weights[0]
    assert abs(weights[grades].mean() - 1.0) < 1e-9
    assert np.allclose(class_weights(grades, 4, power=0.0), 1.0)


def test_distillation_loss_is_the_mean_kl_to_the_target_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(6, 1)) - np.sort(rng.normal(0, 2, size=(6, 3)), axis=1)
    targets = rng.dirichlet(np.ones(4), size=6)
    reference = 0.0
    for row, target in zip(logits, targets):
        above = [1.0] + [1 / (1 + np.exp(-z)) for z in row] + [0.0]
        student = [above[k] - above[k + 1] for k in range(4)]
        reference += sum(t * np.log(t / p) for t, p in zip(target, student)) / len(targets)
    loss = distillation_loss(torch.from_numpy(logits), torch.from_numpy(targets))
    assert abs(loss.item() - reference) < 1e-9
    own = grade_probabilities(torch.from_numpy(logits))
    assert abs(distillation_loss(torch.from_numpy(logits), own).item()) < 1e-9


def test_distillation_loss_gradient_pulls_towards_the_target():
    logits = torch.zeros(1, 3, requires_grad=True)
    distillation_loss(logits, torch.tensor([[0.0, 0.0, 0.0, 1.0]])).backward()
    assert logits.grad[0, -1] < 0 and (logits.grad <= 0).all()


def test_distill_from_must_name_a_later_stage():
    stages = [TeacherStageConfig("fast", distill_from="precise"), TeacherStageConfig("precise")]
    check_distillation(stages)
    with pytest.raises(ValueError, match="later stage"):
        check_distillation(stages[::-1])
    with pytest.raises(ValueError, match="later stage"):
        check_distillation([TeacherStageConfig("fast", distill_from="judge"), TeacherStageConfig("precise")])


def test_temperature_scaling_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 1)) - np.array([-2.0, 0.0, 2.0])
    probs = grade_probabilities(torch.from_numpy(logits / 2.5)).numpy()
    grades = np.array([rng.choice(4, p=p / p.sum()) for p in probs])
    assert abs(fit_temperature(logits.astype(np.float32), grades) - 2.5) < 0.25


def test_train_teachers_exports_a_triton_repository(trained_teachers, teacher_config):
    repository = Path(trained_teachers["repository"])
    assert set(trained_teachers["stages"]) == {"features", "fast", "precise"}
    for stage in teacher_config.teachers.stages:
        record = trained_teachers["stages"][stage.name]
        assert record["train_pairs"] == 160 and record["validation_pairs"] == 80
        assert record["temperature"] > 0 and not record["cut_by_time"]
        assert record["validation_nll_calibrated"] <= record["validation_nll_uncalibrated"] + 1e-6
        config = (repository / stage.name / "config.pbtxt").read_text()
        assert f'name: "{stage.name}"' in config and "dynamic_batching {" in config
        assert "max_batch_size: 256" in config and "instance_group [ { count: 1 kind: KIND_CPU } ]" in config
        assert "dims: [ 4 ]" in config
        version = repository / stage.name / "1"
        assert (version / "model.py").exists()
        saved = json.loads((version / "teacher" / "teacher.json").read_text())
        assert saved["num_grades"] == 4
        if stage.kind == "ordinal_features":
            assert record["steps"] == teacher_config.teachers.feature_iterations
            assert saved["kind"] == "ordinal_features" and set(record["feature_weights"]) == set(saved["features"])
        else:
            assert record["steps"] <= stage.max_steps and saved["item_fields"] == stage.item_fields
            assert saved["stacked_on_features"] == (stage.name == "precise")
    layers = {
        s: json.loads((repository / s / "1" / "teacher" / "teacher.json").read_text())["num_layers"]
        for s in ("fast", "precise")
    }
    assert layers == {"fast": 1, "precise": 2}


def test_distilled_fast_stage_imitates_the_trained_precise_stage(teacher_overrides, tmp_path):
    stages = json.loads(
        next(o for o in teacher_overrides if o.startswith("teachers.stages="))[len("teachers.stages=") :]
    )
    fast_config = next(s for s in stages if s["name"] == "fast")
    fast_config.update(distill_from="precise", distill_weight=0.5)
    overrides = [o for o in teacher_overrides if not o.startswith("teachers.stages=")]
    cfg = load_config("local", overrides + [f"teachers.stages={json.dumps(stages)}", "teachers.distill_candidates=5"])
    report = train_teachers(cfg.teachers, cfg.data, tmp_path / "repository", channels_cfg=cfg.channels)
    fast, precise = report["stages"]["fast"], report["stages"]["precise"]
    assert "distillation" not in precise and precise["train_pairs"] == 160
    assert fast["distillation"]["source"] == "precise" and fast["distillation"]["validation_kl"] >= 0
    assert fast["labeled_train_pairs"] == 160 and 160 < fast["train_pairs"] <= 160 + 5 * 6
    assert all("validation_kl" in h for h in fast["history"]) and fast["steps"] <= fast_config["max_steps"]
    escalation = report["escalation"]
    assert escalation["pairs"] == 80 and escalation["max_prob"]["share"] <= cfg.teachers.escalation_target_share
    saved = json.loads((tmp_path / "repository" / "fast" / "1" / "teacher" / "teacher.json").read_text())
    assert saved["record"]["distillation"]["source"] == "precise"
