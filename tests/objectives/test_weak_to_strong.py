"""Weak-to-strong losses and PGR against hand-worked values (Burns et al. 2023, arXiv 2312.09390)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignkit.objectives.weak_to_strong import (
    class_logits,
    logconf_coefficient,
    logconf_loss,
    performance_gap_recovered,
    pgr_bootstrap,
    xent_loss,
)
from alignkit.stats import resample_indices

LOGITS = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
WEAK = torch.tensor([0.8, 0.2, 0.6, 0.9])  # weak P(positive = column 1)


def cross_entropy(target: list[float], logits: list[float]) -> float:
    norm = math.log(sum(math.exp(v) for v in logits))
    return -sum(t * (v - norm) for t, v in zip(target, logits, strict=True))


def test_class_logits_put_the_positive_class_in_column_one():
    assert class_logits(torch.tensor([-1.0]), torch.tensor([-3.0])).tolist() == [[-3.0, -1.0]]


def test_xent_is_soft_cross_entropy_against_weak_labels():
    out = xent_loss(LOGITS, WEAK)
    expected = [cross_entropy([1 - w, w], row) for w, row in zip(WEAK.tolist(), LOGITS.tolist(), strict=True)]
    assert out.loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out.metrics["w2s/strong_positive_rate"]) == pytest.approx(0.5)  # rows 0 and 3 favour column 1


def test_logconf_after_warmup_mixes_half_weak_half_hardened_predictions():
    # p0 = softmax[:, 0] = [0.269, 0.881, 0.5, 0.119]; the weak labels are 62.5 % positive, so the threshold is
    # the 0.625 quantile of p0 = 0.269 + 0.875·(0.5 − 0.269) = 0.471: rows 1 and 2 harden to class 0, 0 and 3 to 1.
    hard = [[0, 1], [1, 0], [1, 0], [0, 1]]
    out = logconf_loss(LOGITS, WEAK, step_frac=0.5)
    expected = [cross_entropy([0.5 * (1 - w) + 0.5 * h[0], 0.5 * w + 0.5 * h[1]], row)
                for w, h, row in zip(WEAK.tolist(), hard, LOGITS.tolist(), strict=True)]
    assert out.loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out.metrics["w2s/aux_coef"]) == 0.5


def test_logconf_coefficient_ramps_then_jumps_as_in_burns_code():
    assert logconf_coefficient(0.0) == 0.0
    assert logconf_coefficient(0.05) == pytest.approx(0.025)
    assert logconf_coefficient(0.1) == pytest.approx(0.05)  # end of warm-up: aux_coef · warmup_frac
    assert logconf_coefficient(0.1001) == 0.5  # then the full aux_coef
    during = logconf_loss(LOGITS, WEAK, step_frac=0.05)
    mixed = [[0.975 * (1 - w) + 0.025 * h0, 0.975 * w + 0.025 * (1 - h0)]
             for w, h0 in zip(WEAK.tolist(), [0, 1, 1, 0], strict=True)]
    expected = [cross_entropy(t, row) for t, row in zip(mixed, LOGITS.tolist(), strict=True)]
    assert during.loss.tolist() == pytest.approx(expected, abs=1e-6)


def test_logconf_with_no_aux_weight_is_xent():
    torch.testing.assert_close(logconf_loss(LOGITS, WEAK, 0.7, aux_coef=0.0).loss, xent_loss(LOGITS, WEAK).loss)


def test_pgr_definition_and_guard():
    assert performance_gap_recovered(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert performance_gap_recovered(0.3, 0.2, 0.1) == pytest.approx(0.5)  # lower-is-better: signs flip together
    assert math.isnan(performance_gap_recovered(0.5, 0.6, 0.5))


def test_pgr_bootstrap_is_paired_and_brackets_the_estimate():
    weak = torch.tensor([1.0, 0, 0, 0] * 25)
    w2s = torch.tensor([1.0, 1, 0, 0] * 25)
    ceiling = torch.tensor([1.0, 1, 1, 0] * 25)
    out = pgr_bootstrap(weak, w2s, ceiling, n_boot=500, seed=1)
    assert (out["weak_accuracy"], out["w2s_accuracy"], out["ceiling_accuracy"]) == (0.25, 0.5, 0.75)
    assert out["pgr"] == pytest.approx(0.5)
    assert out["ci_low"] < 0.5 < out["ci_high"] and out["ci_high"] - out["ci_low"] < 0.6
    same = pgr_bootstrap(weak, ceiling, ceiling, n_boot=200)  # the student matches the ceiling on every example
    assert same["pgr"] == 1.0 and same["ci_low"] == pytest.approx(1.0) and same["ci_high"] == pytest.approx(1.0)


def test_pgr_bootstrap_is_nan_when_the_ceiling_is_below_the_weak_model():
    # the SmolLM2 run's shape: weak 0.75, student 0.625, ceiling ~0.73 on 48 examples; the plain ratio would be
    # (0.625 - 0.75) / (0.729 - 0.75) = 6, "recovering 600 %" of a gap that does not exist
    weak = torch.tensor([1.0] * 36 + [0.0] * 12)
    w2s = torch.tensor([1.0] * 30 + [0.0] * 18)
    ceiling = torch.tensor([1.0] * 35 + [0.0] * 13)
    out = pgr_bootstrap(weak, w2s, ceiling, n_boot=300, seed=0)
    assert math.isnan(out["pgr"])
    assert out["n_valid"] == 0  # the ceiling is right only where weak is: every replicate has gap <= 0, dropped


def test_pgr_bootstrap_replicates_by_hand_on_two_examples():
    # weak wrong on both, ceiling right on both, the student right on the first: every resample has gap 1 and
    # PGR = the student's resampled accuracy, 0, 1/2 or 1 with chances 1/4, 1/2, 1/4, so the 95 % interval is [0, 1]
    out = pgr_bootstrap(torch.tensor([0.0, 0]), torch.tensor([1.0, 0]), torch.tensor([1.0, 1]), n_boot=400, seed=3)
    assert out["pgr"] == 0.5 and out["n_valid"] == 400 and (out["ci_low"], out["ci_high"]) == (0.0, 1.0)
    # weak right on the second example only: a resample of the second twice has gap 0 and is dropped; every other
    # has PGR 1 (the student and the ceiling are right on both). The resamples are alignkit.stats' seeded stream.
    out = pgr_bootstrap(torch.tensor([0.0, 1]), torch.tensor([1.0, 1]), torch.tensor([1.0, 1]), n_boot=400, seed=3)
    kept = sum(int((idx == 0).any(axis=1).sum()) for idx in resample_indices(2, 400, seed=3))
    assert out["n_valid"] == kept and 250 < kept < 350
    assert out["pgr"] == 1.0 and (out["ci_low"], out["ci_high"]) == (1.0, 1.0)
    assert np.isnan(pgr_bootstrap(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1.0]), n_boot=50)["ci_low"])
