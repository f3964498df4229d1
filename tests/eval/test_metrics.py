import math

import numpy as np
import pytest
import torch

from alignkit.eval.metrics import (
    alignment_gap,
    bootstrap_ci,
    difficulty,
    difficulty_loss_threshold,
    flipped_share,
    idealized_ranking_accuracy,
    implicit_reward_accuracy,
    kl_estimate,
    length_adjusted_win_rate,
    length_stats,
    ranking_accuracy,
    reward_margins,
    win_rate,
)


def test_ranking_accuracy_counts_ties_as_incorrect():
    c = [-10.0, -5.0, -7.0, -3.0]
    r = [-12.0, -5.0, -6.0, -4.0]  # correct, tie, wrong, correct
    assert ranking_accuracy(c, r) == 0.5
    assert ranking_accuracy(torch.tensor(c), torch.tensor(r)) == 0.5
    assert isinstance(ranking_accuracy(np.array(c), np.array(r)), float)


def test_ranking_accuracy_length_normalized():
    # Sums: chosen loses (-10 < -6); per token: -10/10 = -1.0 > -6/3 = -2.0, so chosen wins.
    c, r, tc, tr = [-10.0, -4.0], [-6.0, -8.0], [10, 2], [3, 2]
    assert ranking_accuracy(c, r) == 0.5
    assert ranking_accuracy(c, r, tc, tr, length_normalized=True) == 1.0
    with pytest.raises(ValueError, match="tokens"):
        ranking_accuracy(c, r, length_normalized=True)
    assert math.isnan(ranking_accuracy([], []))


def test_implicit_reward_accuracy_and_margins():
    pc, pr = np.array([-9.0, -10.0, -5.0]), np.array([-11.0, -9.0, -5.0])
    rc, rr = np.array([-10.0, -10.0, -6.0]), np.array([-10.0, -10.0, -6.0])
    # h_w - h_l = (1 - -1), (0 - 1), (1 - 1) = 2, -1, 0 ; times beta 0.1
    np.testing.assert_allclose(reward_margins(pc, pr, rc, rr, 0.1), [0.2, -0.1, 0.0])
    assert implicit_reward_accuracy(pc, pr, rc, rr, 0.1) == pytest.approx(1 / 3)
    got = reward_margins(torch.tensor(pc), torch.tensor(pr), torch.tensor(rc), torch.tensor(rr), 0.5)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, [1.0, -0.5, 0.0])
    with pytest.raises(ValueError, match="beta"):
        reward_margins(pc, pr, rc, rr, 0.0)


def test_idealized_ranking_accuracy_hand_computed():
    ref_c = np.array([-10.0, -10.0, -10.0, -20.0])
    ref_r = np.array([-11.0, -9.5, -8.0, -10.0])
    # ref_c - ref_r = 1, -0.5, -2, -10. beta=1, alpha=0.75: log(3) = 1.0986
    # 1+1.10 > 0 ; -0.5+1.10 > 0 ; -2+1.10 < 0 ; -10+1.10 < 0  -> 2/4
    assert idealized_ranking_accuracy(ref_c, ref_r, beta=1.0, alpha=0.75) == 0.5
    # beta = 0.1 -> (1/beta)·log 3 = 10.986: all four pass.
    assert idealized_ranking_accuracy(ref_c, ref_r, beta=0.1, alpha=0.75) == 1.0
    # per-example alpha: 0.5 adds nothing (log 1 = 0), so only the first pair passes with alpha=0.5
    alpha = np.array([0.5, 0.5, 0.9, 0.5])  # third: -2 + log 9 = 0.197 > 0
    assert idealized_ranking_accuracy(ref_c, ref_r, beta=1.0, alpha=alpha) == 0.5
    assert alignment_gap(0.75, 0.6) == pytest.approx(0.15)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1, float("nan"), [0.6, 1.0, 0.7, 0.7]])
def test_idealized_ranking_accuracy_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        idealized_ranking_accuracy([-1.0] * 4, [-2.0] * 4, beta=0.1, alpha=alpha)


def test_idealized_ranking_accuracy_alpha_shape_checked():
    with pytest.raises(ValueError, match="shape"):
        idealized_ranking_accuracy([-1.0] * 4, [-2.0] * 4, beta=0.1, alpha=[0.6, 0.7])


def test_difficulty_and_loss_threshold():
    ref_c, ref_r = np.array([-12.0, -10.0, -10.0]), np.array([-10.0, -10.0, -13.0])
    c = difficulty(ref_c, ref_r)
    np.testing.assert_allclose(c, [2.0, 0.0, -3.0])
    beta = 0.5
    expected = [-math.log(1 / (1 + math.exp(-beta * x))) for x in c]
    np.testing.assert_allclose(difficulty_loss_threshold(ref_c, ref_r, beta), expected, rtol=1e-12)
    # log(2) at c = 0; stable (finite, tiny but positive / linear) at extremes
    assert difficulty_loss_threshold([0.0], [0.0], 1.0)[0] == pytest.approx(math.log(2))
    extreme = difficulty_loss_threshold([0.0, 0.0], [-5000.0, 5000.0], 1.0)
    assert np.all(np.isfinite(extreme))
    assert extreme[0] == pytest.approx(5000.0)
    assert extreme[1] == 0.0 or extreme[1] < 1e-300


def test_flipped_share():
    before_c = [-5.0, -5.0, -5.0, -1.0]
    before_r = [-4.0, -5.0, -3.0, -2.0]  # mis-ranked: 0, 1 (tie), 2 ; correct: 3
    after_c = [-3.0, -4.0, -5.0, -1.0]
    after_r = [-4.0, -5.0, -3.0, -2.0]  # 0 and 1 flipped, 2 not
    stats = flipped_share(before_c, before_r, after_c, after_r)
    assert stats.share == pytest.approx(2 / 3)
    assert (stats.n_flipped, stats.n_misranked) == (2, 3)
    none = flipped_share([0.0, 1.0], [-1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    assert none.share is None and none.n_misranked == 0


def test_bootstrap_ci_basic():
    est, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert est == 3.0 and low < 3.0 < high
    assert bootstrap_ci([1.0, 2.0, 3.0], seed=1) == bootstrap_ci([1.0, 2.0, 3.0], seed=1)
    assert bootstrap_ci([7.0]) == (7.0, 7.0, 7.0)
    est, low, high = bootstrap_ci(np.arange(20.0), stat=np.median)
    assert est == 9.5 and low <= 9.5 <= high
    # a stat without an axis argument still works (row-by-row fallback)
    value_range = lambda x: float(np.max(x) - np.min(x))  # noqa: E731
    est, low, high = bootstrap_ci(np.arange(20.0), stat=value_range, n_resamples=200)
    assert est == 19.0 and high <= 19.0
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_bootstrap_ci_coverage_near_nominal():
    rng = np.random.default_rng(123)
    true_mean, n_draws = 1.0, 200
    hits = 0
    for i in range(n_draws):
        sample = rng.exponential(true_mean, size=80)  # skewed, so this is not a trivial case
        _, low, high = bootstrap_ci(sample, n_resamples=1000, seed=i)
        hits += low <= true_mean <= high
    coverage = hits / n_draws
    assert 0.88 <= coverage <= 0.99, coverage


def test_win_rate_ci_coverage_near_nominal():
    # Win/tie/loss draws with a known expected outcome; the 95% interval should hold it ~95% of the time.
    rng = np.random.default_rng(7)
    probs = np.array([0.45, 0.2, 0.35])  # P(win), P(tie), P(loss)
    true_rate = probs[0] + 0.5 * probs[1]
    n_draws = 200
    hits = 0
    for i in range(n_draws):
        outcomes = rng.choice([1.0, 0.5, 0.0], size=60, p=probs)
        _, low, high = win_rate(outcomes, n_resamples=1000, seed=i)
        hits += low <= true_rate <= high
    assert 0.88 <= hits / n_draws <= 0.99, hits / n_draws


def test_win_rate():
    est, low, high = win_rate([1, 1, 0.5, 0, 1, 0.5, 0, 1])
    assert est == pytest.approx(5 / 8)
    assert 0 <= low <= est <= high <= 1
    with pytest.raises(ValueError, match="outcomes"):
        win_rate([1, 2])


def _length_driven_data(seed, n, true_rate, slope, mean_diff):
    rng = np.random.default_rng(seed)
    len_b = rng.integers(50, 300, size=n).astype(float)
    d = rng.normal(mean_diff, 120.0, size=n)
    len_p = len_b + d
    z = np.tanh(d / d.std())  # same feature the estimator uses
    p = 1 / (1 + np.exp(-(math.log(true_rate / (1 - true_rate)) + slope * z)))
    u = rng.random(n)
    # Some ties so the fractional-target path is exercised: a band around p becomes 0.5.
    outcomes = np.where(u < p - 0.03, 1.0, np.where(u > p + 0.03, 0.0, 0.5))
    return outcomes, len_p, len_b


def test_length_adjusted_win_rate_recovers_underlying_rate():
    outcomes, len_p, len_b = _length_driven_data(seed=0, n=4000, true_rate=0.4, slope=2.5, mean_diff=150.0)
    res = length_adjusted_win_rate(outcomes, len_p, len_b, n_resamples=300)
    assert res.raw_win_rate > 0.6  # longer answers inflate the raw rate
    assert res.win_rate == pytest.approx(0.4, abs=0.04)
    assert res.low <= res.win_rate <= res.high
    assert res.low <= 0.4 <= res.high
    assert res.slope == pytest.approx(2.5, abs=0.4)


def test_length_adjusted_win_rate_equals_raw_without_length_effect():
    outcomes = np.array([1, 0, 1, 1, 0, 0.5, 1, 0] * 20, dtype=float)
    same = np.full(outcomes.size, 100.0)
    res = length_adjusted_win_rate(outcomes, same, same, n_resamples=0)
    assert res.win_rate == pytest.approx(outcomes.mean(), abs=1e-6)
    assert math.isnan(res.low)
    # perfect separation (every longer answer won) stays finite
    d = np.arange(-20.0, 20.0)
    res = length_adjusted_win_rate((d > 0).astype(float), 100 + d, np.full(d.size, 100.0), n_resamples=50)
    assert 0.0 < res.win_rate < 1.0 and math.isfinite(res.slope)


def test_kl_estimate():
    pol = np.array([-1.0, -2.0, -3.0])
    ref = np.array([-1.5, -1.0, -3.0])
    k1, k3 = kl_estimate(pol, ref)
    # log r = ref - pol = -0.5, 1.0, 0 ; k1 = mean(0.5, -1, 0)
    assert k1 == pytest.approx(-0.5 / 3)
    expected_k3 = np.mean([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0])
    assert k3 == pytest.approx(expected_k3)
    assert kl_estimate(torch.tensor(pol), torch.tensor(pol)) == (0.0, 0.0)


def test_kl_estimators_agree_on_gaussians():
    # KL(N(0,1) || N(0.3,1)) = 0.045 exactly; both estimators are unbiased on samples from the policy.
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=200_000)
    log_p = -0.5 * x**2
    log_q = -0.5 * (x - 0.3) ** 2
    k1, k3 = kl_estimate(log_p, log_q)
    assert k1 == pytest.approx(0.045, abs=0.003)
    assert k3 == pytest.approx(0.045, abs=0.003)


def test_length_stats():
    stats = length_stats(list(range(1, 11)))
    assert stats == {"mean": 5.5, "median": 5.5, "p90": pytest.approx(9.1), "max": 10.0}
    assert math.isnan(length_stats([])["mean"])
