"""Confidence intervals for scenario rates: Wilson for a rate, percentile bootstrap for a difference.

Wilson's score interval (Wilson, JASA 1927) stays inside [0, 1] and keeps its coverage at the small n and
extreme rates scenario runs have (10 scripts, rates near 0 or 1), where the normal interval collapses to a
point. A difference of two rates (the alignment-faking compliance gap) gets a percentile bootstrap over
conversations, each condition resampled on its own. The intervals themselves live in :mod:`alignkit.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.stats import bootstrap_mean, bootstrap_mean_difference, wilson

bootstrap_difference = bootstrap_mean_difference  # the name score.py and the tests use


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


__all__ = ["bootstrap_difference", "bootstrap_mean", "summarise", "wilson"]
