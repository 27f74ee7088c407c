"""The ordinal head: probabilities from cumulative logits, ordered thresholds, the loss."""

import numpy as np
import pytest
import torch

from unisup.teachers.ordinal import OrdinalHead, grade_probabilities, ordinal_loss


def test_grade_probabilities_are_a_distribution_in_grade_order():
    logits = torch.tensor([[3.0, 0.0, -3.0], [-5.0, -6.0, -7.0], [9.0, 8.0, 7.0]])
    probs = grade_probabilities(logits).numpy()
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert probs[1].argmax() == 0 and probs[2].argmax() == 3
    sharper, flatter = grade_probabilities(logits, 0.5).numpy(), grade_probabilities(logits, 5.0).numpy()
    assert np.all(sharper.max(1) > flatter.max(1))
    with pytest.raises(ValueError, match="shape"):
        grade_probabilities(torch.zeros(3))


def test_head_thresholds_increase_so_probabilities_are_never_negative():
    head = OrdinalHead(8, 5)
    with torch.no_grad():
        head.threshold_gaps.copy_(torch.tensor([-4.0, 3.0, -10.0]))
    assert torch.all(torch.diff(head.thresholds()) > 0)
    probs = grade_probabilities(head(torch.randn(50, 8)))
    assert torch.all(probs >= 0) and torch.allclose(probs.sum(1), torch.ones(50), atol=1e-6)


def test_ordinal_loss_prefers_the_right_side_of_each_threshold():
    grades = torch.tensor([0, 3])
    right = torch.tensor([[-5.0, -6.0, -7.0], [7.0, 6.0, 5.0]])
    assert ordinal_loss(right, grades, torch.ones(2)) < ordinal_loss(-right, grades, torch.ones(2))
