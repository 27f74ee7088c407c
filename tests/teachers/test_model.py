"""The ordinal cross-encoder teacher: truncated encoders, save and load."""

import numpy as np
import pytest

from unisup.teachers.model import OrdinalCrossEncoder


def test_truncated_teacher_saves_and_loads_with_identical_scores(tiny_encoder_path, tmp_path):
    teacher = OrdinalCrossEncoder.from_encoder(tiny_encoder_path, 4, 24, num_layers=1, item_fields=["title"])
    teacher.temperature = 1.7
    queries, items = ["usb cable", "laptop", "red shoes"], ["USB-C cable 2 m", "Notebook 15 inch", "garden hose"]
    before = teacher.predict_probs(queries, items)
    loaded = OrdinalCrossEncoder.load(teacher.save(tmp_path / "teacher"))
    assert (
        loaded.encoder.config.num_hidden_layers == 1 and loaded.temperature == 1.7 and loaded.item_fields == ("title",)
    )
    np.testing.assert_allclose(loaded.predict_probs(queries, items), before, atol=1e-6)
    with pytest.raises(ValueError, match="num_layers"):
        OrdinalCrossEncoder.from_encoder(tiny_encoder_path, 4, 24, num_layers=9)
