"""Confidence intervals for scenario rates: Wilson for a rate, percentile bootstrap for a difference.

Wilson's score interval (Wilson, JASA 1927) stays inside [0, 1] and keeps its coverage at the small n and
extreme rates scenario runs have (10 scripts, rates near 0 or 1), where the normal interval collapses to a
point. A difference of two rates (the alignment-faking compliance gap) gets a percentile bootstrap over
conversations, each condition resampled on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for ``successes`` of ``n``:
    (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n). ``n = 0`` gives (0, 1)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean (for measures that are not 0/1, e.g. an average of classifiers)."""
    if not values:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=float)
    means = data[rng.integers(0, len(data), size=(n_boot, len(data)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bootstrap_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its percentile 95% interval, resampling a and b independently."""
    if not a or not b:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diffs = (x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
             - y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(axis=1))
    return float(x.mean() - y.mean()), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def summarise(values: Sequence[float]) -> dict[str, float | int | str]:
    """n, mean and a 95% interval: Wilson when every value is 0 or 1, else a bootstrap of the mean."""
    n = len(values)
    if n == 0:
        return {"n": 0, "rate": float("nan"), "lo": float("nan"), "hi": float("nan"), "ci": "none"}
    mean = float(sum(values) / n)
    if all(v in (0, 1) for v in values):
        lo, hi = wilson(int(sum(values)), n)
        return {"n": n, "k": int(sum(values)), "rate": mean, "lo": lo, "hi": hi, "ci": "wilson"}
    lo, hi = bootstrap_mean(values)
    return {"n": n, "rate": mean, "lo": lo, "hi": hi, "ci": "bootstrap"}
