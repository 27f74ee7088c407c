"""Bi-encoder losses as functions on plain tensors.

Scores are laid out as a matrix ``(B, N)``: row ``b`` is query ``b`` scored against every
item of the batch. ``target_mask[b, n]`` marks the items of query ``b``'s own list (they
carry targets); ``candidate_mask`` marks the items in the softmax of row ``b``: its own
list plus, with in-batch negatives, the other lists' items (see :func:`in_batch_masks`).

- :func:`listwise_softmax_cross_entropy`: ``-sum_j p_j log q_j`` with
  ``p = softmax(t / T_t)`` over the own list and ``q = softmax(s / T_s)`` over the candidates.
- :func:`listwise_kl`: the same minus the entropy of ``p`` (same gradient, 0 at the optimum).
- :func:`moppr_multi_positive_softmax`: MOPPR's multi-positive softmax,
  ``-mean_{i in O+} log min(q_i * |O+|, 1)``; :func:`moppr_hierarchical_loss` sums it over
  weighted objectives (relevance > click > conversion), each with its own positives and
  candidates.

Every function checks shapes and dtypes and says what it expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _check_matrix(name: str, tensor: torch.Tensor, shape: torch.Size | None = None, dtype: str = "float") -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D (lists, items), got shape {tuple(tensor.shape)}")
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} (the shape of scores)")
    if dtype == "bool" and tensor.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {tensor.dtype}")
    if dtype == "float" and not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the masked entries of each row; 0 (with zero gradient) elsewhere."""
    log_q = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    return log_q.masked_fill(~mask, 0.0)


def _resolve_masks(
    scores: torch.Tensor, target_mask: torch.Tensor, candidate_mask: torch.Tensor | None
) -> torch.Tensor:
    _check_matrix("target_mask", target_mask, scores.shape, "bool")
    if candidate_mask is None:
        return target_mask
    _check_matrix("candidate_mask", candidate_mask, scores.shape, "bool")
    if bool((target_mask & ~candidate_mask).any()):
        raise ValueError("candidate_mask must include every entry of target_mask (a list's own items are candidates)")
    return candidate_mask


def listwise_softmax_cross_entropy(
    scores: torch.Tensor,
    targets: torch.Tensor,
    target_mask: torch.Tensor,
    candidate_mask: torch.Tensor | None = None,
    score_temperature: float = 1.0,
    target_temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over lists of the cross-entropy between ``softmax(t / T_t)`` over each list's own
    items and ``softmax(s / T_s)`` over its candidates. All tensors are ``(B, N)``."""
    _check_matrix("scores", scores)
    _check_matrix("targets", targets, scores.shape)
    candidates = _resolve_masks(scores, target_mask, candidate_mask)
    _check_temperature("score_temperature", score_temperature)
    _check_temperature("target_temperature", target_temperature)
    empty = (~target_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"list(s) {empty} have no item in target_mask; every list needs at least one target")
    if not bool(torch.isfinite(targets[target_mask]).all()):
        raise ValueError("targets must be finite on target_mask entries")
    p = torch.exp(_masked_log_softmax(targets / target_temperature, target_mask)) * target_mask
    log_q = _masked_log_softmax(scores / score_temperature, candidates)
    return -(p * log_q).sum(dim=1).mean()


def listwise_kl(
    scores: torch.Tensor,
    targets: torch.Tensor,
    target_mask: torch.Tensor,
    candidate_mask: torch.Tensor | None = None,
    score_temperature: float = 1.0,
    target_temperature: float = 1.0,
) -> torch.Tensor:
    """KL(p || q): :func:`listwise_softmax_cross_entropy` minus the entropy of the target distribution."""
    ce = listwise_softmax_cross_entropy(
        scores, targets, target_mask, candidate_mask, score_temperature, target_temperature
    )
    log_p = _masked_log_softmax(targets.detach() / target_temperature, target_mask)
    entropy = -(torch.exp(log_p) * log_p).sum(dim=1).mean()
    return ce - entropy


def moppr_multi_positive_softmax(
    scores: torch.Tensor, positives: torch.Tensor, candidate_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """MOPPR's multi-positive softmax: per list, ``-mean_{i in O+} log min(q_i * |O+|, 1)`` with
    ``q = softmax(s / T)`` over the candidates; averaged over the lists that have a positive
    (0 when none has). A positive stops pulling once it holds its share ``1 / |O+|``."""
    _check_matrix("scores", scores)
    _check_matrix("positives", positives, scores.shape, "bool")
    _check_matrix("candidate_mask", candidate_mask, scores.shape, "bool")
    _check_temperature("temperature", temperature)
    if bool((positives & ~candidate_mask).any()):
        raise ValueError("positives must be candidates (positives & ~candidate_mask is not empty)")
    counts = positives.sum(dim=1)
    rows = counts > 0
    if not bool(rows.any()):
        return scores.sum() * 0.0
    log_q = _masked_log_softmax(scores[rows] / temperature, candidate_mask[rows])
    n_pos = counts[rows].to(scores.dtype)
    capped = torch.clamp(log_q + torch.log(n_pos).unsqueeze(1), max=0.0) * positives[rows]
    return -(capped.sum(dim=1) / n_pos).mean()


@dataclass
class MopprObjective:
    """One level of MOPPR's hierarchy: its positives, the candidates of its softmax, its weight."""

    name: str
    positives: torch.Tensor
    candidates: torch.Tensor
    weight: float


def moppr_hierarchical_loss(
    scores: torch.Tensor, objectives: Sequence[MopprObjective], temperature: float = 1.0
) -> torch.Tensor:
    """Weighted sum of :func:`moppr_multi_positive_softmax` over the objectives
    (e.g. relevance > click > conversion, weights decreasing)."""
    if not objectives:
        raise ValueError("moppr_hierarchical_loss needs at least one objective")
    total = scores.sum() * 0.0
    for objective in objectives:
        if objective.weight < 0:
            raise ValueError(f"MOPPR objective {objective.name!r}: weight must be >= 0, got {objective.weight}")
        total = total + objective.weight * moppr_multi_positive_softmax(
            scores, objective.positives, objective.candidates, temperature
        )
    return total


def in_batch_masks(
    owner: torch.Tensor, item_keys: torch.Tensor, num_lists: int, in_batch_negatives: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target_mask, candidate_mask)``, each ``(num_lists, N)``, for ``N`` batch items.

    ``owner[n]`` is the list item ``n`` belongs to and ``item_keys[n]`` an integer id of the
    item. With in-batch negatives a list's candidates are all batch items except copies
    (same key) of its own items, which would otherwise count as negatives.
    """
    if owner.dim() != 1 or item_keys.shape != owner.shape:
        raise ValueError(
            f"owner and item_keys must be 1-D of the same length, got {tuple(owner.shape)} and {tuple(item_keys.shape)}"
        )
    if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= num_lists):
        raise ValueError(f"owner values must lie in 0 .. {num_lists - 1}")
    lists = torch.arange(num_lists, device=owner.device)
    target_mask = owner.unsqueeze(0) == lists.unsqueeze(1)
    if not in_batch_negatives:
        return target_mask, target_mask.clone()
    same_item = item_keys.unsqueeze(0) == item_keys.unsqueeze(1)  # (N, N)
    own_copy = (target_mask.to(torch.float32) @ same_item.to(torch.float32)) > 0
    return target_mask, target_mask | ~own_copy
