"""CUT (Xu et al., Findings of ACL 2024, arXiv 2312.14591) against hand-computed values."""

import math

import pytest
import torch

from alignkit.objectives.cut import cut_flags, cut_loss

ALPHA = 0.1


def lp(probs):
    return torch.tensor(probs, dtype=torch.float64).log().float()


def batch():
    # Row 0 is negative: ratios 0.6/0.5 = 1.2 (flagged), 0.5/0.2 = 2.5 (flagged), 0.9/0.9 = 1 (kept).
    # Row 1 is positive with one padding position (its with-judgment stream is ignored).
    p_with = [[0.6, 0.5, 0.9], [0.3, 0.3, 0.3]]
    p_without = [[0.5, 0.2, 0.9], [0.4, 0.8, 0.1]]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    is_negative = torch.tensor([True, False])
    return lp(p_with), lp(p_without), mask, is_negative


def test_flags_use_ratio_threshold_and_mask():
    with_, without, mask, _ = batch()
    flags = cut_flags(with_, without, mask, threshold=1.1)
    assert flags.tolist() == [[True, True, False], [False, False, False]]
    # A higher λ keeps only the 2.5 ratio; padding is never flagged even with a huge ratio.
    assert cut_flags(with_, without, mask, threshold=2.0).tolist() == [[False, True, False], [False, False, False]]
    padded = cut_flags(lp([[0.9]]), lp([[0.01]]), torch.tensor([[0]]))
    assert not padded.any()


def test_loss_matches_hand_computation():
    with_, without, mask, neg = batch()
    out = cut_loss(with_, without, mask, neg, threshold=1.1, unlikelihood_weight=ALPHA)

    mle_neg = -(math.log(0.6) + math.log(0.5) + math.log(0.9)) / 3
    ul_neg = -(ALPHA * math.log(1 - 0.5 + 1e-5) + ALPHA * math.log(1 - 0.2 + 1e-5) + math.log(0.9)) / 3
    pos = -(math.log(0.4) + math.log(0.8)) / 2
    expected = [(mle_neg + ul_neg) / 2, pos]
    assert out.loss.tolist() == pytest.approx(expected, rel=1e-5)

    m = out.metrics
    assert m["mle_loss"].item() == pytest.approx((mle_neg + pos) / 2, rel=1e-5)
    assert m["ul_loss"].item() == pytest.approx(ul_neg, rel=1e-5)
    assert m["flagged_fraction"].item() == pytest.approx(2 / 3, rel=1e-5)
    assert m["mean_ratio"].item() == pytest.approx((1.2 + 2.5 + 1.0) / 3, rel=1e-5)
    assert m["negative_fraction"].item() == pytest.approx(0.5)


def test_all_positive_batch_is_plain_mle():
    with_, without, mask, _ = batch()
    out = cut_loss(with_, without, mask, torch.tensor([False, False]))
    expected = [-(math.log(0.5) + math.log(0.2) + math.log(0.9)) / 3, -(math.log(0.4) + math.log(0.8)) / 2]
    assert out.loss.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["ul_loss"].item() == 0.0
    assert out.metrics["flagged_fraction"].item() == 0.0
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_positive_rows_ignore_the_judgment_stream_even_if_nan():
    with_, without, mask, neg = batch()
    with_[1] = float("nan")
    with_.requires_grad_(True)
    out = cut_loss(with_, without, mask, neg)
    assert torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert torch.isfinite(with_.grad).all()
    assert (with_.grad[1] == 0).all()


def test_extremes_stay_finite_and_gradient_pushes_flagged_tokens_down():
    # A flagged token the model is certain of (p = 1): log(1 − 1 + 1e-5) stays finite.
    with_ = torch.tensor([[0.0, -1e4, -0.1]], requires_grad=True)
    without = torch.tensor([[-5.0, -1e4, 0.0]], requires_grad=True)
    mask = torch.ones(1, 3)
    out = cut_loss(with_, without, mask, torch.tensor([True]), unlikelihood_weight=1.0)
    assert torch.isfinite(out.loss).all()
    # Token 2 (ratio e^-0.1 < 1.1) is not flagged: plain MLE on it. Token 0 is flagged (ratio e^5).
    ul = -(math.log(1 - math.exp(-5.0) + 1e-5) + (-1e4) + 0.0) / 3
    mle = -(0.0 - 1e4 - 0.1) / 3
    assert out.loss.item() == pytest.approx((mle + ul) / 2, rel=1e-5)
    out.loss.sum().backward()
    assert torch.isfinite(without.grad).all() and torch.isfinite(with_.grad).all()
    # Unlikelihood on the flagged token: raising its log-prob raises the loss.
    assert without.grad[0, 0] > 0
    # MLE in the judged stream: raising its log-prob lowers the loss, by 1/(2T).
    assert with_.grad[0, 0].item() == pytest.approx(-1 / 6)
