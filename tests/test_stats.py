"""alignkit.stats: Wilson's interval against hand-worked values, the percentile bootstrap's resampling stream,
degenerate and dropped replicates, and coverage on samples with a known mean."""

from __future__ import annotations

import numpy as np
import pytest

from alignkit.stats import (
    bootstrap_mean,
    bootstrap_mean_difference,
    bootstrap_replicates,
    percentile_interval,
    resample_indices,
    wilson,
)


def test_wilson_against_a_hand_worked_value():
    # z = 1, 1 of 4: p = 1/4, denominator 1 + 1/4 = 5/4, centre (1/4 + 1/8) / (5/4) = 0.3,
    # half-width sqrt(3/64 + 1/64) / (5/4) = (1/4) / (5/4) = 0.2
    assert wilson(1, 4, z=1.0) == pytest.approx((0.1, 0.5))
    # the 95% default, 8 of 10: centre (0.8 + 1.92073/10) / 1.384146 = 0.71675, half 0.22657
    assert wilson(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    # 0 of 10 keeps a width (upper bound z²/n / (1 + z²/n) = 0.38415 / 1.38415) where the normal interval is a point
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_percentile_interval_interpolates_like_numpy():
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.arange(101.0), confidence=0.5) == pytest.approx((25.0, 75.0))
    with pytest.raises(ValueError):
        percentile_interval([1.0, 2.0], confidence=1.0)


def test_resample_indices_is_one_seeded_stream_in_bounded_chunks():
    chunks = list(resample_indices(7, 10, seed=3, max_entries=21))  # 3 rows of 7 per chunk
    assert [c.shape for c in chunks] == [(3, 7), (3, 7), (3, 7), (1, 7)]
    rng = np.random.default_rng(3)  # the same draws a caller seeding numpy itself gets, chunk by chunk
    assert all(np.array_equal(c, rng.integers(0, 7, size=c.shape)) for c in chunks)
    again = list(resample_indices(7, 10, seed=3, max_entries=21))
    assert all(np.array_equal(a, b) for a, b in zip(chunks, again, strict=True))
    with pytest.raises(ValueError):
        next(resample_indices(0, 10))


def test_bootstrap_of_a_constant_is_degenerate():
    assert bootstrap_mean([3.0] * 9) == (3.0, 3.0)
    assert bootstrap_mean_difference([2.0] * 5, [0.5] * 3) == (1.5, 1.5, 1.5)
    assert np.isnan(bootstrap_mean([])).all()


def test_undefined_replicates_are_dropped():
    # x = [0, 1]: a resample is [0, 0], [1, 1] (undefined here) or mixed, whose mean is exactly 0.5
    x = np.array([0.0, 1.0])
    reps = bootstrap_replicates(lambda idx: None if idx[0] == idx[1] else float(x[idx].mean()), 2, 400, seed=0)
    assert 100 < len(reps) < 300 and set(reps) == {0.5}  # about half of 400 are mixed


def test_batched_and_row_statistics_agree():
    x = np.random.default_rng(0).normal(size=13)
    rows = bootstrap_replicates(lambda idx: float(x[idx].mean()), x.size, 500, seed=4)
    batched = bootstrap_replicates(lambda idx: x[idx].mean(axis=1), x.size, 500, seed=4, batched=True)
    assert np.allclose(rows, batched)


def test_same_seed_same_interval():
    values = np.random.default_rng(1).uniform(size=30)
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    assert bootstrap_mean(values, seed=7) != bootstrap_mean(values, seed=8)
    a, b = values[:12], values[12:]
    assert bootstrap_mean_difference(a, b, seed=2) == bootstrap_mean_difference(a, b, seed=2)


def test_mean_interval_covers_a_known_mean_near_nominally():
    rng = np.random.default_rng(123)
    hits = 0
    for i in range(200):
        sample = rng.normal(2.0, 1.0, size=60)
        low, high = bootstrap_mean(sample, n_resamples=1000, seed=i)
        hits += low <= 2.0 <= high
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_difference_interval_brackets_a_known_difference():
    rng = np.random.default_rng(9)
    hits = 0
    for i in range(100):
        value, low, high = bootstrap_mean_difference(rng.normal(1.0, 1.0, 50), rng.normal(0.0, 1.0, 40),
                                                     n_resamples=1000, seed=i)
        assert low <= value <= high
        hits += low <= 1.0 <= high
    assert 0.85 <= hits / 100 <= 1.0, hits
