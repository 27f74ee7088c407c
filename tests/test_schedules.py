"""Learning-rate schedules."""

import pytest
import torch

from unisup.schedules import warmup_linear_decay


def test_warmup_linear_decay_rises_to_the_learning_rate_then_falls_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_linear_decay(optimizer, warmup=4, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert optimizer.param_groups[0]["lr"] == 0.0
