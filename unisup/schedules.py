"""Learning-rate schedules shared by the training loops."""

from __future__ import annotations

import torch


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer, warmup: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` steps to each group's learning rate, then linear decay to zero
    at ``total_steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
