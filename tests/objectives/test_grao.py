"""GRAO (Wang et al., arXiv 2508.07750v1, Eq. 2-4) against hand-computed values, and the reduction of its
"alignment regulariser" to a re-weighting of the exploration and imitation terms."""

import math

import pytest
import torch

from alignkit.objectives.grao import grao_loss, grao_terms, group_advantages

EPS = 1e-6


def hand_advantages(samples, reference, include_reference=False):
    values = [*samples, reference] if include_reference else list(samples)
    m = sum(values) / len(values)
    std = math.sqrt(sum((v - m) ** 2 for v in values) / len(values))  # population std, as Eq. 4 writes it
    return [(v - m) / (std + EPS) for v in samples], (reference - m) / (std + EPS), std


@pytest.mark.parametrize("include_reference", [False, True])
def test_group_advantages(include_reference):
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([4.0]), include_reference=include_reference)
    samples, reference, std = hand_advantages([1.0, 2.0, 3.0], 4.0, include_reference)
    assert adv.samples[0].tolist() == pytest.approx(samples, rel=1e-5)
    assert adv.reference.item() == pytest.approx(reference, rel=1e-5)
    assert adv.std.item() == pytest.approx(std, rel=1e-6)
    assert not adv.zero_variance.any()
    if not include_reference:  # Eq. 4: the G sample statistics, so R(y) = 4 lies (4 − 2)/std(1, 2, 3) above
        assert adv.reference.item() == pytest.approx(2 / math.sqrt(2 / 3), rel=1e-5)


def test_loss_is_the_paper_equation_with_its_defaults():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    ells = [-1.0, -2.0, -3.0]
    ell_y = -0.5
    out = grao_loss(torch.tensor([ells]), torch.tensor([ell_y]), rewards, torch.tensor([4.0]))  # β 0.5, λ 0.6

    a, a_y, std = hand_advantages([1.0, 2.0, 3.0], 4.0)
    beta, lam, g = 0.5, 0.6, 3
    j = sum(ai * li + beta * a_y * ell_y + lam * ai * (li - ell_y) for ai, li in zip(a, ells, strict=True)) / g
    assert out.loss.item() == pytest.approx(-j, rel=1e-5)
    exploration = -sum(ai * li for ai, li in zip(a, ells, strict=True)) / g
    m = out.metrics
    assert m["loss/exploration"].item() == pytest.approx(exploration, rel=1e-5)
    assert m["loss/imitation"].item() == pytest.approx(-beta * a_y * ell_y, rel=1e-5)
    assert m["loss/alignment"].item() == pytest.approx(
        -lam * sum(ai * (li - ell_y) for ai, li in zip(a, ells, strict=True)) / g, rel=1e-5)
    assert m["reward_mean"].item() == pytest.approx(2.0)
    assert m["reward_std"].item() == pytest.approx(std, rel=1e-6)
    assert m["reference_beats_all_fraction"].item() == 1.0


def _terms_with_grads(include_reference: bool, beta: float, lam: float):
    """{term: (value [N], (d/dℓ(o_i), d/dℓ(y)))} for random groups of 8, and the total loss of ``grao_loss``."""
    g = torch.Generator().manual_seed(0)
    n, size = 5, 8
    rewards = torch.randint(-1, 2, (n, size), generator=g).float()  # a ternary judge's +1 / 0 / −1
    rewards[:, 0], rewards[:, 1] = 1.0, -1.0  # no zero-variance group
    reference_rewards = torch.randint(-1, 2, (n,), generator=g).float()
    ell = (-3 * torch.rand(n, size, generator=g)).requires_grad_()
    ell_y = (-3 * torch.rand(n, generator=g)).requires_grad_()
    adv = group_advantages(rewards, reference_rewards, include_reference=include_reference)
    terms = grao_terms(adv.samples, adv.reference, ell, ell_y, beta, lam)
    out = {}
    for name, term in zip(("exploration", "imitation", "alignment"), terms, strict=True):
        grads = torch.autograd.grad(term.sum(), (ell, ell_y), retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
        out[name] = (term.detach(), grads)
    total = grao_loss(ell, ell_y, rewards, reference_rewards, beta=beta, lam=lam,
                      include_reference=include_reference).loss.detach()
    torch.testing.assert_close(total, sum(value for value, _ in out.values()))
    return out, total


def test_alignment_regulariser_is_lambda_times_exploration_with_eq4_statistics():
    """G-sample statistics: Σ_i Â_i = 0, so the λ term equals λ × exploration in value and gradient, and the
    reference answer drops out of it (zero gradient on ℓ(y)); the whole loss is (1 + λ)·exploration + imitation."""
    beta, lam = 0.5, 0.6
    terms, total = _terms_with_grads(False, beta, lam)
    (exp_v, (exp_gx, _)), (imi_v, _), (ali_v, (ali_gx, ali_gy)) = terms.values()
    torch.testing.assert_close(ali_v, lam * exp_v, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ali_gx, lam * exp_gx, atol=1e-7, rtol=1e-5)
    assert ali_gy.abs().max().item() < 1e-6
    torch.testing.assert_close(total, (1 + lam) * exp_v + imi_v, atol=1e-6, rtol=1e-5)


def test_alignment_regulariser_reweights_both_terms_with_the_reference_in_the_statistics():
    """G+1 statistics: Σ_i Â_i = −Â_y, so the λ term equals λ × exploration + λ/(β·G) × imitation."""
    beta, lam, size = 0.5, 0.6, 8
    terms, total = _terms_with_grads(True, beta, lam)
    (exp_v, (exp_gx, exp_gy)), (imi_v, (imi_gx, imi_gy)), (ali_v, (ali_gx, ali_gy)) = terms.values()
    k = lam / (beta * size)
    torch.testing.assert_close(ali_v, lam * exp_v + k * imi_v, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ali_gx, lam * exp_gx + k * imi_gx, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(ali_gy, lam * exp_gy + k * imi_gy, atol=1e-7, rtol=1e-5)
    assert ali_gy.abs().max().item() > 1e-3  # here the reference does enter the λ term
    torch.testing.assert_close(total, (1 + lam) * exp_v + (1 + k) * imi_v, atol=1e-6, rtol=1e-5)


def test_zero_variance_groups_get_zero_advantage_and_are_counted():
    # 0.1 is not exactly representable, so the float mean differs from 0.1 by rounding: still no signal.
    rewards = torch.tensor([[2.0, 2.0, 2.0], [0.1, 0.1, 0.1], [0.0, 1.0, 0.0]])
    ref_rewards = torch.tensor([3.0, 0.1, 0.5])
    ell = torch.full((3, 3), -1.0, requires_grad=True)
    ell_ref = torch.tensor([-1.0, -1.0, -1.0], requires_grad=True)
    out = grao_loss(ell, ell_ref, rewards, ref_rewards, lam=0.3)
    adv = group_advantages(rewards, ref_rewards)
    assert adv.zero_variance.tolist() == [True, True, False]
    assert (adv.samples[:2] == 0).all() and (adv.reference[:2] == 0).all()  # even though R(y) = 3 ≠ 2
    assert out.loss[:2].tolist() == [0.0, 0.0]
    assert out.metrics["zero_variance_groups"].item() == 2
    assert out.metrics["zero_variance_fraction"].item() == pytest.approx(2 / 3)
    assert out.metrics["reference_beats_all_fraction"].item() == pytest.approx(1 / 3)
    out.loss.sum().backward()
    assert (ell.grad[:2] == 0).all() and (ell_ref.grad[:2] == 0).all()
    assert torch.isfinite(ell.grad).all() and torch.isfinite(ell_ref.grad).all()
    # with the reference in the statistics the first group has variance again
    assert group_advantages(rewards, ref_rewards, include_reference=True).zero_variance.tolist() == \
        [False, True, False]


def test_extremes_are_finite():
    rewards = torch.tensor([[1e6, -1e6, 0.0, 0.0]])
    ell = torch.tensor([[-1e4, 0.0, -5.0, -1.0]], requires_grad=True)
    out = grao_loss(ell, torch.tensor([-1e4]), rewards, torch.tensor([1e6]))
    assert torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert torch.isfinite(ell.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())
