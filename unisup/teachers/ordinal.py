"""The ordinal head every teacher shares: ordered thresholds, per-grade probabilities, the loss.

A teacher's relevance score ``s`` is compared with K-1 ordered thresholds: the
cumulative logits ``s - theta_k`` model P(grade > k). Thresholds are increasing by
construction (first threshold + cumulative softplus gaps), so P(grade > k) never
increases with k and the per-grade probabilities are never negative.
"""

from __future__ import annotations

import torch
from torch import nn


def grade_probabilities(cumulative_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-grade probabilities (n, K) from cumulative logits (n, K-1) of P(grade > k)."""
    if cumulative_logits.ndim != 2 or cumulative_logits.shape[1] < 1:
        raise ValueError(f"expected cumulative logits of shape (n, K-1), got {tuple(cumulative_logits.shape)}")
    above = torch.sigmoid(cumulative_logits / temperature)
    ones = torch.ones_like(above[:, :1])
    zeros = torch.zeros_like(above[:, :1])
    upper = torch.cat([ones, above], dim=1)
    lower = torch.cat([above, zeros], dim=1)
    return (upper - lower).clamp_min(0.0)


class OrdinalHead(nn.Module):
    """Score + K-1 ordered thresholds -> K-1 cumulative logits."""

    def __init__(self, hidden_size: int, num_grades: int):
        super().__init__()
        if num_grades < 2:
            raise ValueError(f"an ordinal head needs at least 2 grades, got {num_grades}")
        self.score = nn.Linear(hidden_size, 1)
        self.first_threshold = nn.Parameter(torch.zeros(1))
        self.threshold_gaps = nn.Parameter(torch.zeros(num_grades - 2))

    def thresholds(self) -> torch.Tensor:
        gaps = nn.functional.softplus(self.threshold_gaps)
        return torch.cat([self.first_threshold, self.first_threshold + torch.cumsum(gaps, 0)])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.score(pooled) - self.thresholds()


def ordinal_loss(cumulative_logits: torch.Tensor, grades: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy of the K-1 cumulative targets [grade > k]."""
    ks = torch.arange(cumulative_logits.shape[1], device=grades.device)
    targets = (grades[:, None] > ks[None, :]).float()
    per_pair = torch.nn.functional.binary_cross_entropy_with_logits(cumulative_logits, targets, reduction="none").sum(1)
    return (per_pair * weights).sum() / weights.sum()
