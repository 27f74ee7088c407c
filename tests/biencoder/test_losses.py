"""Losses against straightforward per-list reference implementations, gradients included."""

from __future__ import annotations

import math

import pytest
import torch

from unisup.biencoder.losses import (
    MopprObjective,
    in_batch_masks,
    listwise_kl,
    listwise_softmax_cross_entropy,
    moppr_hierarchical_loss,
    moppr_multi_positive_softmax,
)


def reference_listwise_ce(scores, targets, target_mask, candidate_mask, ts, tt):
    """Per list, with Python loops: -sum_j p_j log q_j."""
    losses = []
    for b in range(scores.shape[0]):
        own = [j for j in range(scores.shape[1]) if target_mask[b, j]]
        cand = [j for j in range(scores.shape[1]) if candidate_mask[b, j]]
        z_t = sum(torch.exp(targets[b, j] / tt) for j in own)
        z_s = sum(torch.exp(scores[b, j] / ts) for j in cand)
        losses.append(
            -sum(torch.exp(targets[b, j] / tt) / z_t * torch.log(torch.exp(scores[b, j] / ts) / z_s) for j in own)
        )
    return sum(losses) / len(losses)


def reference_moppr(scores, positives, candidates, temperature):
    losses = []
    for b in range(scores.shape[0]):
        pos = [j for j in range(scores.shape[1]) if positives[b, j]]
        if not pos:
            continue
        z = sum(torch.exp(scores[b, j] / temperature) for j in range(scores.shape[1]) if candidates[b, j])
        terms = [torch.log(torch.clamp(torch.exp(scores[b, j] / temperature) / z * len(pos), max=1.0)) for j in pos]
        losses.append(-sum(terms) / len(pos))
    return sum(losses) / len(losses)


@pytest.fixture
def batch():
    """3 lists of 4, 3 and 5 items; item 2 (key 7) appears in lists 0 and 1."""
    gen = torch.Generator().manual_seed(0)
    owner = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    keys = torch.tensor([0, 1, 7, 3, 4, 7, 6, 8, 9, 10, 11, 12])
    scores = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    targets = torch.randn(3, 12, generator=gen, dtype=torch.float64) * 2
    return owner, keys, scores, targets


def test_in_batch_masks_exclude_copies_of_own_items(batch):
    owner, keys, _, _ = batch
    own, cand = in_batch_masks(owner, keys, 3)
    assert own.sum(1).tolist() == [4, 3, 5]
    assert not cand[0, 5] and not cand[1, 2]  # the shared item is never a negative of either list
    assert cand[0].sum() == 11 and cand[2].sum() == 12
    own2, cand2 = in_batch_masks(owner, keys, 3, in_batch_negatives=False)
    assert torch.equal(own2, own) and torch.equal(cand2, own)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_listwise_matches_reference_with_gradients(batch, in_batch, kind):
    owner, keys, scores, targets = batch
    own, cand = in_batch_masks(owner, keys, 3, in_batch)
    s1 = scores.clone().requires_grad_(True)
    s2 = scores.clone().requires_grad_(True)
    fn = listwise_softmax_cross_entropy if kind == "ce" else listwise_kl
    loss = fn(s1, targets, own, cand, score_temperature=0.5, target_temperature=2.0)
    ref = reference_listwise_ce(s2, targets, own, cand, 0.5, 2.0)
    if kind == "kl":
        p = [torch.softmax(targets[b][own[b]] / 2.0, 0) for b in range(3)]
        ref = ref + sum((q * torch.log(q)).sum() for q in p) / 3
        assert loss.item() >= 0
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    assert torch.count_nonzero(s1.grad[~cand]) == 0


def test_listwise_gradcheck(batch):
    owner, keys, scores, targets = batch
    own, cand = in_batch_masks(owner, keys, 3)
    scores = scores.clone().requires_grad_(True)
    targets = targets.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s, t: listwise_softmax_cross_entropy(s, t, own, cand, 0.7, 1.3), (scores, targets)
    )


def test_listwise_ce_is_minimal_when_scores_match_targets():
    targets = torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    at_optimum = listwise_softmax_cross_entropy(targets.clone(), targets, mask)
    p = torch.softmax(targets[0], 0)
    torch.testing.assert_close(at_optimum, -(p * torch.log(p)).sum())
    assert listwise_kl(targets.clone(), targets, mask).abs() < 1e-12
    assert listwise_softmax_cross_entropy(-targets, targets, mask) > at_optimum


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_moppr_matches_reference_with_gradients(batch, temperature):
    owner, keys, scores, _ = batch
    own, cand = in_batch_masks(owner, keys, 3)
    positives = torch.zeros_like(own)
    positives[0, [0, 1]] = True
    positives[2, [7, 9, 10]] = True  # list 1 has no positive: left out of the mean
    s1 = scores.clone().requires_grad_(True)
    s2 = scores.clone().requires_grad_(True)
    loss = moppr_multi_positive_softmax(s1, positives, cand, temperature)
    ref = reference_moppr(s2, positives, cand, temperature)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    assert torch.count_nonzero(s1.grad[1]) == 0
    assert torch.autograd.gradcheck(
        lambda s: moppr_multi_positive_softmax(s, positives, cand, temperature), (scores.clone().requires_grad_(True),)
    )


def test_moppr_cap_stops_pulling_a_positive_that_holds_its_share():
    scores = torch.tensor([[5.0, 5.0, -5.0, -5.0]], dtype=torch.float64, requires_grad=True)
    positives = torch.tensor([[True, True, False, False]])
    loss = moppr_multi_positive_softmax(scores, positives, torch.ones_like(positives))
    # each positive holds ~1/2 of the mass: min(q * 2, 1) ~ 1, loss ~ 0
    assert 0 <= loss.item() < 1e-3
    plain_ce = -torch.log_softmax(scores[0], 0)[:2].mean()
    assert plain_ce.item() > math.log(2) - 1e-3


def test_hierarchical_moppr_is_the_weighted_sum(batch):
    owner, keys, scores, _ = batch
    own, cand = in_batch_masks(owner, keys, 3)
    relevant = own & (torch.arange(12) % 2 == 0)
    clicked = own & (torch.arange(12) % 4 == 0)
    objectives = [MopprObjective("relevance", relevant, cand, 1.0), MopprObjective("click", clicked, own, 0.5)]
    total = moppr_hierarchical_loss(scores, objectives, 0.5)
    expected = moppr_multi_positive_softmax(scores, relevant, cand, 0.5) + 0.5 * moppr_multi_positive_softmax(
        scores, clicked, own, 0.5
    )
    torch.testing.assert_close(total, expected)


def test_shape_and_mask_errors_are_clear(batch):
    owner, keys, scores, targets = batch
    own, cand = in_batch_masks(owner, keys, 3)
    with pytest.raises(ValueError, match=r"targets has shape \(3, 11\), expected \(3, 12\)"):
        listwise_softmax_cross_entropy(scores, targets[:, :11], own)
    with pytest.raises(ValueError, match="scores must be 2-D"):
        listwise_softmax_cross_entropy(scores[0], targets[0], own[0])
    with pytest.raises(TypeError, match="target_mask must be a bool tensor"):
        listwise_softmax_cross_entropy(scores, targets, own.float())
    empty = own.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"list\(s\) \[1\] have no item"):
        listwise_softmax_cross_entropy(scores, targets, empty)
    with pytest.raises(ValueError, match="candidate_mask must include"):
        listwise_softmax_cross_entropy(scores, targets, own, own & ~own)
    with pytest.raises(ValueError, match="score_temperature must be > 0"):
        listwise_softmax_cross_entropy(scores, targets, own, score_temperature=0)
    with pytest.raises(ValueError, match="positives must be candidates"):
        moppr_multi_positive_softmax(scores, cand, own)
