"""PoFT (Fan et al., AAAI 2025, arXiv 2412.12865; reconstruction) against hand-computed values."""

import math

import pytest
import torch

from alignkit.objectives.poft import aligned_model_scores, poft_loss


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_loss_and_metrics_match_hand_computation():
    sums = torch.tensor([-6.0, -2.0])
    tokens = torch.tensor([3.0, 4.0])  # s_θ = [-2.0, -0.5]
    s_a = torch.tensor([-1.5, -1.0])
    out = poft_loss(sums, tokens, s_a)
    assert out.loss.tolist() == pytest.approx([-math.log(sigmoid(-0.5)), -math.log(sigmoid(0.5))], rel=1e-6)
    m = out.metrics
    assert m["s_theta"].item() == pytest.approx(-1.25)
    assert m["s_aligned"].item() == pytest.approx(-1.25)
    assert m["weight"].item() == pytest.approx((sigmoid(0.5) + sigmoid(-0.5)) / 2, rel=1e-6)
    assert m["nll"].item() == pytest.approx(1.25)


def test_temperature_divides_the_score_difference():
    out = poft_loss(torch.tensor([-6.0]), torch.tensor([3.0]), torch.tensor([-1.5]), temperature=2.0)
    assert out.loss.item() == pytest.approx(-math.log(sigmoid(-0.25)), rel=1e-6)
    with pytest.raises(ValueError):
        poft_loss(torch.tensor([-6.0]), torch.tensor([3.0]), torch.tensor([-1.5]), temperature=0.0)


def test_gradient_is_reweighted_sft():
    sums = torch.tensor([-6.0, -2.0], requires_grad=True)
    tokens = torch.tensor([3.0, 4.0])
    out = poft_loss(sums, tokens, torch.tensor([-1.5, -1.0]))
    out.loss.sum().backward()
    # d/d sum of −log σ(s_θ − s_A) = −σ(s_A − s_θ) / |y|
    assert sums.grad.tolist() == pytest.approx([-sigmoid(0.5) / 3, -sigmoid(-0.5) / 4], rel=1e-6)


def test_extremes_are_finite():
    sums = torch.tensor([-1e6, 0.0], requires_grad=True)
    out = poft_loss(sums, torch.tensor([1.0, 0.0]), torch.tensor([0.0, -1e6]))
    assert torch.isfinite(out.loss).all()
    assert out.loss[0].item() == pytest.approx(1e6, rel=1e-6)
    assert out.loss[1].item() == pytest.approx(0.0, abs=1e-6)
    out.loss.sum().backward()
    assert torch.isfinite(sums.grad).all()


def test_aligned_model_scores_average_per_token_means():
    logps = torch.tensor([[-6.0, -4.0], [-3.0, -8.0]])  # [M=2, B=2]
    tokens = torch.tensor([[3.0, 4.0], [3.0, 2.0]])  # each model's own tokenisation
    assert aligned_model_scores(logps, tokens).tolist() == pytest.approx([(-2 - 1) / 2, (-1 - 4) / 2])
    assert aligned_model_scores(logps, torch.tensor([3.0, 4.0])).tolist() == pytest.approx([-1.5, -1.5])
