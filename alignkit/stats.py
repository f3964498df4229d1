"""The one place for confidence intervals: Wilson's score interval for a rate and the percentile bootstrap.

Every layer reports intervals (eval, probes, scenarios, rewards, decoding), so this is a base module: it
imports numpy and the standard library only.

* :func:`wilson` (Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927)
  stays inside [0, 1] and keeps its coverage at small n and rates near 0 or 1, where the normal interval
  collapses to a point.
* The percentile bootstrap (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993): resample the n
  items with replacement, recompute the statistic, take the empirical (1 − c)/2 and (1 + c)/2 quantiles
  (numpy's linear interpolation). :func:`resample_indices` is the one resampling stream: the same seed gives
  the same indices wherever an interval is computed, drawn in chunks so ``n_resamples × n`` indices never
  need more than ``max_entries`` integers at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
MAX_ENTRIES = 4_000_000  # resampled indices held at once (32 MB of int64)


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


def resample_indices(n: int, n_resamples: int, seed: int | np.random.Generator = 0,
                     max_entries: int = MAX_ENTRIES) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``range(n)`` as index matrices [chunk, n], ``n_resamples`` rows in all.

    The chunking is part of the stream (numpy draws small integers in 64-bit words, and a chunk's unused half
    word is dropped), so callers that must reproduce recorded numbers keep the same ``max_entries``. A
    ``Generator`` instead of a seed continues that generator's stream (two samples resampled one after the
    other, as :func:`bootstrap_mean_difference` does)."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one item")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chunk = max(1, max_entries // n)
    for start in range(0, n_resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_resamples - start), n))


def percentile_interval(replicates: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The (1 − c)/2 and (1 + c)/2 quantiles of the bootstrap replicates."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(replicates, dtype=np.float64), [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_replicates(statistic: Callable[[np.ndarray], float | None] | Callable[[np.ndarray], np.ndarray],
                         n: int, n_resamples: int = 2000, seed: int | np.random.Generator = 0, *,
                         batched: bool = False, max_entries: int = MAX_ENTRIES) -> np.ndarray:
    """The statistic over ``n_resamples`` resamples of ``n`` items (the stream of :func:`resample_indices`).

    ``statistic`` maps one index vector [n] to a value, or None where it is undefined (e.g. a correlation of
    a constant resample; those replicates are dropped). With ``batched=True`` it maps an index matrix
    [chunk, n] to ``chunk`` values at once (vectorised, e.g. ``lambda idx: x[idx].mean(axis=1)``); nothing is
    dropped then, so NaNs propagate."""
    out: list[np.ndarray] = []
    for idx in resample_indices(n, n_resamples, seed, max_entries):
        if batched:
            out.append(np.asarray(statistic(idx), dtype=np.float64).reshape(len(idx)))
        else:
            values = [v for v in map(statistic, idx) if v is not None]
            out.append(np.asarray(values, dtype=np.float64))
    return np.concatenate(out)


def _means(x: np.ndarray, n_resamples: int, seed: int | np.random.Generator) -> np.ndarray:
    return bootstrap_replicates(lambda idx: x[idx].mean(axis=1), x.size, n_resamples, seed, batched=True)


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (vectorised). NaNs when there are no values."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return float("nan"), float("nan")
    return percentile_interval(_means(x, n_resamples, seed), confidence)


def bootstrap_mean_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                              n_resamples: int = 2000, confidence: float = 0.95,
                              seed: int = 0) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its percentile bootstrap interval, resampling a and b independently (two
    unpaired samples, e.g. two conditions' conversations). NaNs when either is empty."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.size == 0 or y.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)  # one stream: a's resamples, then b's
    diffs = _means(x, n_resamples, rng) - _means(y, n_resamples, rng)
    low, high = percentile_interval(diffs, confidence)
    return float(x.mean() - y.mean()), low, high
