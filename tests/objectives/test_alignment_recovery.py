"""Alignment recovery's tensor pieces against hand-worked values (Yang et al., S&P 2025, arXiv 2504.09757)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.objectives.alignment_recovery import direction_loss, top_k_masks, toward_mask


def test_direction_loss_is_minus_cosine_of_the_batch_mean():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean (0.5, 0.5)
    assert direction_loss(hidden, torch.tensor([1.0, 0.0])).item() == pytest.approx(-1 / math.sqrt(2))
    assert direction_loss(hidden, torch.tensor([-1.0, -1.0])).item() == pytest.approx(1.0)


def test_toward_mask_marks_descent_moves_only():
    current = torch.tensor([1.0, 2.0, 3.0, 4.0])
    target = torch.tensor([0.0, 2.0, 5.0, 5.0])
    grad = torch.tensor([0.5, 1.0, -1.0, 1.0])
    # moving 1 -> 0 against a positive gradient descends; 2 == 2 is no move; 3 -> 5 against a negative gradient
    # descends; 4 -> 5 along a positive gradient ascends
    assert toward_mask(current, target, grad).tolist() == [True, False, True, False]


def test_top_k_is_global_across_tensors_and_respects_candidates():
    grads = {"a": torch.tensor([0.9, -0.1, 0.5]), "b": torch.tensor([[-0.8, 0.7], [0.05, -1.0]])}
    candidates = {"a": torch.tensor([True, True, True]), "b": torch.tensor([[True, True], [True, False]])}
    masks = top_k_masks(grads, candidates, k=3)  # |grad| of candidates: .9 .1 .5 .8 .7 .05 -> .9, .8, .7
    assert masks["a"].tolist() == [True, False, False]
    assert masks["b"].tolist() == [[True, True], [False, False]]  # -1.0 is the largest but not a candidate
    assert not any(m.any() for m in top_k_masks(grads, candidates, k=0).values())
