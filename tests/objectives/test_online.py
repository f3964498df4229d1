"""Online IPO / IPO-MD (Calandriello et al., ICML 2024): the loss by hand and the mixture formula."""

import math

import pytest
import torch

from alignkit.engine.generation import geometric_mixture_logits
from alignkit.objectives.online import online_ipo_loss, symmetrized_preference

# Summed: h(y) = −4 + 5 = 1, h(y') = −1; h(y) = −1, h(y') = 2.
# Per token: h(y) = (−4 + 5)/2 = 0.5, h(y') = (−6 + 5)/2 = −0.5; h(y) = (−6 + 5)/3 = −1/3, h(y') = (−3 + 5)/1 = 2.
POLICY_Y, POLICY_Y2 = [-4.0, -6.0], [-6.0, -3.0]
REF_Y, REF_Y2 = [-5.0, -5.0], [-5.0, -5.0]
TOKENS_Y, TOKENS_Y2 = [2.0, 3.0], [2.0, 1.0]
P = [0.8, 0.3]


def ipo(**kwargs):
    t = torch.tensor
    return online_ipo_loss(t(POLICY_Y), t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P),
                           tokens_y=t(TOKENS_Y), tokens_y2=t(TOKENS_Y2), **kwargs)


def test_default_is_sequence_level():
    # Summed log-ratios (the paper's h): Δ = [1 − (−1), −1 − 2] = [2, −3]; τ = 0.5 targets (p − ½)/0.5 = [0.6, −0.4].
    t = torch.tensor
    default = online_ipo_loss(t(POLICY_Y), t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P), tau=0.5)
    assert default.loss.tolist() == pytest.approx([(2 - 0.6) ** 2, (-3 + 0.4) ** 2], rel=1e-5)
    assert ipo(tau=0.5).loss.tolist() == default.loss.tolist()  # token counts are ignored unless normalising
    assert default.metrics["delta"].item() == pytest.approx((2 - 3) / 2)


def test_soft_and_hard_targets_length_normalised():
    # τ = 0.1: soft targets (p − ½)/τ = [3, −2]; hard targets ±5.
    soft = ipo(tau=0.1, length_normalize=True)
    assert soft.loss.tolist() == pytest.approx([(1.0 - 3.0) ** 2, (-1 / 3 - 2 - (-2.0)) ** 2], rel=1e-5)
    assert soft.metrics["target"].item() == pytest.approx(0.5)
    assert soft.metrics["delta"].item() == pytest.approx((1.0 + (-1 / 3 - 2)) / 2, rel=1e-5)
    assert soft.metrics["rewards/probabilities"].item() == pytest.approx(0.55)
    hard = ipo(tau=0.1, hard_labels=True, length_normalize=True)
    assert hard.loss.tolist() == pytest.approx([(1.0 - 5.0) ** 2, (-7 / 3 + 5.0) ** 2], rel=1e-5)
    t = torch.tensor
    with pytest.raises(ValueError, match="tokens"):
        online_ipo_loss(t(POLICY_Y), t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P), length_normalize=True)


def test_gradient_and_extremes():
    policy_y = torch.tensor(POLICY_Y, requires_grad=True)
    t = torch.tensor
    out = online_ipo_loss(policy_y, t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P), tau=0.1)
    out.loss.sum().backward()
    # d/d log π(y) of (Δ − target)² = 2(Δ − target), Δ = [2, −3], targets [3, −2]
    assert policy_y.grad.tolist() == pytest.approx([2 * (2 - 3), 2 * (-3 + 2)], rel=1e-5)
    policy_y = torch.tensor(POLICY_Y, requires_grad=True)
    out = online_ipo_loss(policy_y, t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P), tau=0.1,
                          tokens_y=t(TOKENS_Y), tokens_y2=t(TOKENS_Y2), length_normalize=True)
    out.loss.sum().backward()
    # length-normalised: 2(Δ̄ − target)/|y|
    assert policy_y.grad.tolist() == pytest.approx([2 * (1 - 3) / 2, 2 * (-1 / 3) / 3], rel=1e-5)
    big = online_ipo_loss(t([-1e4]), t([0.0]), t([0.0]), t([-1e4]), t([1.0]), tau=1e-3,
                          tokens_y=t([0.0]), tokens_y2=t([1.0]), length_normalize=True)
    assert torch.isfinite(big.loss).all()
    assert torch.isfinite(online_ipo_loss(t([-1e4]), t([0.0]), t([0.0]), t([-1e4]), t([1.0]), tau=1e-3).loss).all()


def test_symmetrized_preference_and_mixture():
    assert symmetrized_preference(torch.tensor([0.8]), torch.tensor([0.4])).item() == pytest.approx(0.7)
    policy, ref, beta = [0.1, 1.0, -2.0], [2.0, 0.0, 0.5], 0.3
    mixed = geometric_mixture_logits(torch.tensor(policy), torch.tensor(ref), beta).softmax(-1)
    p = [math.exp(x) / sum(math.exp(v) for v in policy) for x in policy]
    q = [math.exp(x) / sum(math.exp(v) for v in ref) for x in ref]
    unnorm = [pi ** (1 - beta) * qi ** beta for pi, qi in zip(p, q, strict=True)]
    assert mixed.tolist() == pytest.approx([u / sum(unnorm) for u in unnorm], rel=1e-5)
