"""Correlations the honesty, Bullshit Index, moral-direction and PROFILE suites report (numpy only).

Each returns ``None`` when it is undefined (fewer than two points, or a constant input), so callers decide
and document what an undefined correlation means for their metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from alignkit.stats import bootstrap_replicates, percentile_interval


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    out = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            out[order[start:end]] = (start + end + 1) / 2
            start = end
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    return pearson(ranks(x), ranks(y)) if len(x) >= 2 else None


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's τ-b: (C − D) / sqrt((C + D + T_x)(C + D + T_y)), T_x the pairs tied only in x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float((sx * sy).sum())
    untied_x, untied_y = float((sx != 0).sum()), float((sy != 0).sum())
    if untied_x == 0 or untied_y == 0:
        return None
    return concordant_minus_discordant / np.sqrt(untied_x * untied_y)


def point_biserial(p: Sequence[float], y: Sequence[int]) -> float | None:
    """r_pb = (mean(p | y=1) − mean(p | y=0)) / std(p) · sqrt(n1·n0 / n²), population std (equal to Pearson's r
    of p and the 0/1 y). None when y is constant or p has zero variance."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=int)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0 or p.std() == 0:
        return None
    return float((p[y == 1].mean() - p[y == 0].mean()) / p.std() * np.sqrt(n1 * n0 / len(p) ** 2))


def bootstrap_ci(statistic: Callable[[np.ndarray], float | None], n: int, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic(indices)`` over items (:mod:`alignkit.stats`' resampling
    stream); None when fewer than 2 resamples give a defined value."""
    values = bootstrap_replicates(statistic, n, resamples, seed)
    return percentile_interval(values, level) if len(values) >= 2 else None
