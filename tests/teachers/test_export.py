"""config.pbtxt of an exported teacher stage, and the repository's model card."""

from pathlib import Path

import pytest

from unisup.teachers.export import model_config


def test_config_sets_forward_batch_size_batching_and_instances():
    text = model_config("fast", 4, 256, 2, "KIND_GPU", 500, "/opt/site", 32)
    assert "max_batch_size: 256" in text and "max_queue_delay_microseconds: 500" in text
    assert "instance_group [ { count: 2 kind: KIND_GPU } ]" in text
    assert 'key: "forward_batch_size" value: { string_value: "32" }' in text
    assert 'key: "python_paths" value: { string_value: "/opt/site" }' in text


def test_config_defaults_to_forward_passes_of_64_pairs():
    text = model_config("precise", 4, 256, 1, "KIND_CPU")
    assert 'key: "forward_batch_size" value: { string_value: "64" }' in text and "dynamic_batching { }" in text


def test_config_rejects_an_unknown_instance_kind():
    with pytest.raises(ValueError, match="KIND_CPU or KIND_GPU"):
        model_config("fast", 4, 256, 1, "KIND_TPU")


def test_the_repository_card_holds_the_training_records_then_the_audit(teacher_config, trained_teachers):
    from unisup.model_card import front_matter
    from unisup.teachers.audit import quality_audit
    from unisup.teachers.backends import InProcessBackend
    from unisup.teachers.export import MODEL_CARD, write_model_card

    repository = Path(trained_teachers["repository"])
    card = front_matter((repository / MODEL_CARD).read_text())
    assert card["license"] == "apache-2.0" and "base_model" not in card  # tiny encoders, not the MiniLM
    assert card["training"]["seed"] == teacher_config.teachers.seed
    assert card["training"]["stages"] == {
        name: {"steps": r["steps"], "best_epoch": r["best_epoch"]} for name, r in trained_teachers["stages"].items()
    }
    assert "model-index" not in card
    audit = quality_audit(teacher_config, InProcessBackend(str(repository)), "test", str(repository))
    write_model_card(repository, trained_teachers, teacher_config.teachers, teacher_config.data, audit)
    text = (repository / MODEL_CARD).read_text()
    card = front_matter(text)
    metrics = {m["name"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    for who, stats in [*audit["stages"].items(), ("cascade", audit["cascade"])]:
        assert metrics[f"{who} QWK"] == pytest.approx(stats["qwk"], abs=1e-6)
        assert metrics[f"{who} condensed nDCG@10"] == pytest.approx(stats["condensed_ndcg@10"], abs=1e-6)
    assert metrics["features_baseline QWK"] == pytest.approx(audit["features_baseline"]["qwk"], abs=1e-6)
    assert card["audit_passed"] == audit["gate"]["passed"] and "| cascade |" in text
    assert sorted(p.name for p in repository.iterdir() if p.is_dir()) == ["fast", "features", "precise"]
