"""GRAO (Wang et al., arXiv 2508.07750; reconstruction) against hand-computed values."""

import math

import pytest
import torch

from alignkit.objectives.grao import grao_loss, group_advantages

EPS = 1e-6


def hand_advantages(samples, reference):
    values = [*samples, reference]
    m = sum(values) / len(values)
    std = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return [(v - m) / (std + EPS) for v in samples], (reference - m) / (std + EPS), std


def test_group_advantages_normalise_over_samples_and_reference():
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([4.0]))
    samples, reference, std = hand_advantages([1.0, 2.0, 3.0], 4.0)
    assert adv.samples[0].tolist() == pytest.approx(samples, rel=1e-5)
    assert adv.reference.item() == pytest.approx(reference, rel=1e-5)
    assert adv.std.item() == pytest.approx(std, rel=1e-6)
    assert not adv.zero_variance.any()


def test_loss_terms_match_hand_computation():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    ell = torch.tensor([[-1.0, -2.0, -3.0]])
    ell_ref = torch.tensor([-0.5])
    lam = 0.5
    out = grao_loss(ell, ell_ref, rewards, torch.tensor([4.0]), lam=lam)

    a, a_ref, std = hand_advantages([1.0, 2.0, 3.0], 4.0)
    ells = [-1.0, -2.0, -3.0]
    exploration = -sum(ai * li for ai, li in zip(a, ells, strict=True)) / 3
    imitation = -a_ref * -0.5
    alignment = lam * sum(ai * (li + 0.5) for ai, li in zip(a, ells, strict=True)) / 3
    assert out.loss.item() == pytest.approx(exploration + imitation + alignment, rel=1e-5)
    m = out.metrics
    assert m["loss/exploration"].item() == pytest.approx(exploration, rel=1e-5)
    assert m["loss/imitation"].item() == pytest.approx(imitation, rel=1e-5)
    assert m["loss/alignment"].item() == pytest.approx(alignment, rel=1e-5)
    assert m["reward_mean"].item() == pytest.approx(2.0)
    assert m["reward_std"].item() == pytest.approx(std, rel=1e-6)
    assert m["reference_beats_all_fraction"].item() == 1.0


def test_zero_variance_groups_get_zero_advantage_and_are_counted():
    # 0.1 is not exactly representable, so the float mean differs from 0.1 by rounding: still no signal.
    rewards = torch.tensor([[2.0, 2.0, 2.0], [0.1, 0.1, 0.1], [0.0, 1.0, 0.0]])
    ref_rewards = torch.tensor([2.0, 0.1, 0.5])
    ell = torch.full((3, 3), -1.0, requires_grad=True)
    ell_ref = torch.tensor([-1.0, -1.0, -1.0], requires_grad=True)
    out = grao_loss(ell, ell_ref, rewards, ref_rewards, lam=0.3)
    adv = group_advantages(rewards, ref_rewards)
    assert adv.zero_variance.tolist() == [True, True, False]
    assert (adv.samples[:2] == 0).all() and (adv.reference[:2] == 0).all()
    assert out.loss[:2].tolist() == [0.0, 0.0]
    assert out.metrics["zero_variance_groups"].item() == 2
    assert out.metrics["zero_variance_fraction"].item() == pytest.approx(2 / 3)
    assert out.metrics["reference_beats_all_fraction"].item() == 0.0
    out.loss.sum().backward()
    assert (ell.grad[:2] == 0).all() and torch.isfinite(ell.grad).all() and torch.isfinite(ell_ref.grad).all()


def test_lambda_one_cancels_the_sample_terms():
    # Documented property of the reconstruction: at λ = 1 only advantage-weighted imitation remains.
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    ell = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ell_ref = torch.tensor([-0.5], requires_grad=True)
    out = grao_loss(ell, ell_ref, rewards, torch.tensor([4.0]), lam=1.0)
    out.loss.sum().backward()
    assert ell.grad.abs().max().item() < 1e-6
    _, a_ref, _ = hand_advantages([1.0, 2.0, 3.0], 4.0)
    assert out.loss.item() == pytest.approx(0.5 * a_ref * 2 / 3, rel=1e-5)


def test_extremes_are_finite():
    rewards = torch.tensor([[1e6, -1e6, 0.0, 0.0]])
    ell = torch.tensor([[-1e4, 0.0, -5.0, -1.0]], requires_grad=True)
    out = grao_loss(ell, torch.tensor([-1e4]), rewards, torch.tensor([1e6]))
    assert torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert torch.isfinite(ell.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())
