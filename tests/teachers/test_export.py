"""config.pbtxt of an exported teacher stage."""

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
