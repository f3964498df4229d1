"""Pure evaluation metrics for preference alignment.

Implicit rewards are DPO's (Rafailov et al., "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model", NeurIPS 2023, arXiv:2305.18290). Ranking accuracy, idealized ranking accuracy R*,
difficulty and flips follow Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings",
NeurIPS 2024, arXiv:2405.19534. The length-controlled win rate follows Dubois et al., "Length-Controlled
AlpacaEval: A Simple Way to Debias Automatic Evaluators", COLM 2024, arXiv:2404.04475.

Every function takes numpy arrays, torch tensors or plain sequences and returns python floats or numpy
arrays. No models, no I/O. All log-probabilities are per-sequence sums over response tokens (prompt
masked), as produced by the log-prob engine; ``*_tokens`` are response token counts.

Notation: ``h(y) = log π_θ(y|x) − log π_ref(y|x)``; ``y_w``/``y_l`` are chosen/rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from alignkit.stats import MAX_ENTRIES, bootstrap_replicates, percentile_interval

ArrayLike = Any  # np.ndarray | torch.Tensor | Sequence[float] | float


class Estimate(NamedTuple):
    """A point estimate with a (percentile bootstrap) confidence interval."""

    estimate: float
    low: float
    high: float


class FlipStats(NamedTuple):
    """Result of :func:`flipped_share`. ``share`` is None when nothing was mis-ranked before."""

    share: float | None
    n_flipped: int
    n_misranked: int


class KLEstimate(NamedTuple):
    k1: float
    k3: float


class LengthAdjustedWinRate(NamedTuple):
    """Result of :func:`length_adjusted_win_rate`.

    ``win_rate``/``low``/``high`` are the length-controlled estimate and its bootstrap interval;
    ``raw_win_rate`` is the plain mean outcome; ``intercept``/``slope`` are the fitted logistic coefficients.
    """

    win_rate: float
    low: float
    high: float
    raw_win_rate: float
    intercept: float
    slope: float


def _np(x: ArrayLike) -> np.ndarray:
    """float64 1-D numpy view of a tensor/array/sequence/scalar."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().to("cpu").double().numpy()
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


def _same_shape(*arrays: np.ndarray) -> None:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"inputs must have the same shape, got {sorted(shapes)}")


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return beta


def _mean_or_nan(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    # log σ(x) = −log(1 + e^{−x}); logaddexp never overflows.
    return -np.logaddexp(0.0, -x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_sigmoid(x))


# --------------------------------------------------------------------------------------------------
# Ranking accuracy (Chen et al. 2024) and implicit-reward accuracy (Rafailov et al. 2023)
# --------------------------------------------------------------------------------------------------


def ranking_accuracy(
    logp_chosen: ArrayLike,
    logp_rejected: ArrayLike,
    tokens_chosen: ArrayLike | None = None,
    tokens_rejected: ArrayLike | None = None,
    length_normalized: bool = False,
) -> float:
    """Likelihood ranking accuracy of a model (Chen et al., NeurIPS 2024, arXiv:2405.19534).

    ``R = (1/N) Σ 1[ log π(y_w|x) > log π(y_l|x) ]``

    With ``length_normalized=True`` each log-prob is divided by its response token count first:
    ``R_norm = (1/N) Σ 1[ log π(y_w|x)/|y_w| > log π(y_l|x)/|y_l| ]``.

    Ties count as **incorrect** (strict inequality), so identical responses never inflate accuracy.
    This is the likelihood ranking, not DPO's implicit-reward ``rewards/accuracies``. Returns NaN for
    empty input.
    """
    c, r = _np(logp_chosen), _np(logp_rejected)
    _same_shape(c, r)
    if length_normalized:
        if tokens_chosen is None or tokens_rejected is None:
            raise ValueError("length_normalized=True needs tokens_chosen and tokens_rejected")
        tc, tr = _np(tokens_chosen), _np(tokens_rejected)
        _same_shape(c, tc, tr)
        if np.any(tc <= 0) or np.any(tr <= 0):
            raise ValueError("token counts must be positive for length normalisation")
        c, r = c / tc, r / tr
    return _mean_or_nan(c > r)


def reward_margins(
    policy_c: ArrayLike, policy_r: ArrayLike, ref_c: ArrayLike, ref_r: ArrayLike, beta: float
) -> np.ndarray:
    """Per-example implicit reward margin ``β·(h(y_w) − h(y_l))``, with ``h = log π_θ − log π_ref``."""
    beta = _check_beta(beta)
    pc, pr, rc, rr = _np(policy_c), _np(policy_r), _np(ref_c), _np(ref_r)
    _same_shape(pc, pr, rc, rr)
    return beta * ((pc - rc) - (pr - rr))


def implicit_reward_accuracy(
    policy_c: ArrayLike, policy_r: ArrayLike, ref_c: ArrayLike, ref_r: ArrayLike, beta: float
) -> float:
    """DPO's ``rewards/accuracies``: ``(1/N) Σ 1[ β·h(y_w) > β·h(y_l) ]`` (ties incorrect, as in TRL)."""
    return _mean_or_nan(reward_margins(policy_c, policy_r, ref_c, ref_r, beta) > 0)


def idealized_ranking_accuracy(ref_c: ArrayLike, ref_r: ArrayLike, beta: float, alpha: ArrayLike) -> float:
    """Idealized ranking accuracy R* of the exact RLHF/DPO optimum (Chen et al. 2024, arXiv:2405.19534).

    Under Bradley-Terry the optimum is ``π* ∝ π_ref·exp(r*/β)`` with ``r*(y_w) − r*(y_l) = log(α/(1−α))``,
    where ``α = P(y_w ≻ y_l)``. π* ranks a pair correctly iff the condition below holds, so

    ``R* = (1/N) Σ 1[ log π_ref(y_w|x) − log π_ref(y_l|x) + (1/β)·log(α/(1−α)) > 0 ]``

    ``alpha`` is a scalar or a per-example array with ``0 < α < 1`` (α = 1 would let every pair flip). With a
    single label per pair use a smoothed α in (0.5, 1); with several ratings, the annotator agreement.
    Ties count as incorrect.
    """
    beta = _check_beta(beta)
    c, r = _np(ref_c), _np(ref_r)
    _same_shape(c, r)
    a = _np(alpha)
    if np.any(~np.isfinite(a)) or np.any(a <= 0) or np.any(a >= 1):
        raise ValueError("alpha must lie strictly between 0 and 1")
    if a.size != 1 and a.shape != c.shape:
        raise ValueError(f"alpha must be a scalar or have shape {c.shape}, got {a.shape}")
    condition = c - r + np.log(a / (1.0 - a)) / beta
    return _mean_or_nan(condition > 0)


def alignment_gap(R_star: float, R: float) -> float:  # noqa: N803 - names follow the paper
    """Alignment gap ``R* − R(π_θ)``: how far the trained model's ranking accuracy is from the ideal."""
    return float(R_star) - float(R)


def difficulty(ref_c: ArrayLike, ref_r: ArrayLike) -> np.ndarray:
    """Per-example difficulty ``c = log π_ref(y_l|x) − log π_ref(y_w|x)`` (Chen et al. 2024, arXiv:2405.19534).

    ``c > 0`` means the reference model mis-ranks the pair; larger ``c`` is harder to flip, because the
    policy needs a log-ratio margin ``h(y_w) − h(y_l) > c``.
    """
    c, r = _np(ref_c), _np(ref_r)
    _same_shape(c, r)
    return r - c


def difficulty_loss_threshold(ref_c: ArrayLike, ref_r: ArrayLike, beta: float) -> np.ndarray:
    """DPO loss a pair must get below to be ranked correctly: ``−log σ(β·c)``, ``c`` from :func:`difficulty`.

    Computed as ``log(1 + e^{−β·c})`` via ``logaddexp`` so large |β·c| neither overflows nor underflows to 0.
    """
    beta = _check_beta(beta)
    return -_log_sigmoid(beta * difficulty(ref_c, ref_r))


def flipped_share(
    before_c: ArrayLike, before_r: ArrayLike, after_c: ArrayLike, after_r: ArrayLike
) -> FlipStats:
    """Among pairs mis-ranked (likelihood; ties = mis-ranked) before training, the share ranked right after.

    ``share = |{i : before_c_i ≤ before_r_i  and  after_c_i > after_r_i}| / |{i : before_c_i ≤ before_r_i}|``

    Returns ``FlipStats(share, n_flipped, n_misranked)``; ``share`` is None (not NaN) when no pair was
    mis-ranked before, so callers can't silently average a 0/0.
    """
    bc, br, ac, ar = _np(before_c), _np(before_r), _np(after_c), _np(after_r)
    _same_shape(bc, br, ac, ar)
    misranked = ~(bc > br)
    flipped = misranked & (ac > ar)
    n_mis, n_flip = int(misranked.sum()), int(flipped.sum())
    return FlipStats(share=(n_flip / n_mis) if n_mis else None, n_flipped=n_flip, n_misranked=n_mis)


# --------------------------------------------------------------------------------------------------
# Bootstrap, win rates
# --------------------------------------------------------------------------------------------------


def _stat_rows(stat: Callable[..., Any], samples: np.ndarray) -> np.ndarray:
    """Apply ``stat`` to each row; vectorised when ``stat`` takes ``axis`` (np.mean, np.median, ...)."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(stat(row)) for row in samples])


def bootstrap_ci(
    values: ArrayLike,
    stat: Callable[..., Any] = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap: ``(stat(values), q_{(1−c)/2}, q_{(1+c)/2})`` of ``stat`` over resamples.

    Resamples ``n`` values with replacement ``n_resamples`` times (the stream of
    :func:`alignkit.stats.resample_indices`) and takes the empirical quantiles of the statistic.
    Deterministic for a given ``seed``. NaNs in ``values`` are kept (they propagate through ``np.mean``);
    drop them first if that is not wanted.
    """
    x = _np(values)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    boot = bootstrap_replicates(lambda idx: _stat_rows(stat, x[idx]), x.size, n_resamples, seed, batched=True)
    return Estimate(float(stat(x)), *percentile_interval(boot, confidence))


def _check_outcomes(outcomes: ArrayLike) -> np.ndarray:
    y = _np(outcomes)
    if y.size == 0:
        raise ValueError("no outcomes")
    if np.any(~np.isfinite(y)) or np.any(y < 0) or np.any(y > 1):
        raise ValueError("outcomes must lie in [0, 1] (1 = win, 0.5 = tie, 0 = loss)")
    return y


def win_rate(
    outcomes: ArrayLike, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Win rate ``(1/N) Σ o_i`` with ``o_i ∈ {1 win, 0.5 tie, 0 loss}`` and a percentile bootstrap CI."""
    return bootstrap_ci(_check_outcomes(outcomes), np.mean, n_resamples, confidence, seed)


def _length_feature(len_policy: np.ndarray, len_baseline: np.ndarray) -> np.ndarray:
    """``tanh(d / std(d))`` with ``d = len_policy − len_baseline``.

    Not centred: zero must keep meaning "equal length". tanh bounds the pull of extreme outliers, as in
    AlpacaEval-LC. If all differences are equal the scale is meaningless, so it falls back to 1.
    """
    d = len_policy - len_baseline
    scale = float(d.std())
    if not scale > 0:
        scale = max(float(np.abs(d).max()), 1.0)
    return np.tanh(d / scale)


def _fit_logistic(
    y: np.ndarray, z: np.ndarray, ridge: float, iters: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Batched Newton/IRLS for ``P(win) = σ(a + b·z)``. ``y``/``z`` are [B, n]; returns (a [B], b [B]).

    Fractional targets (ties = 0.5) are fine: the Bernoulli log-likelihood stays concave. A small ridge on
    ``b`` keeps the fit finite under perfect separation (e.g. a tiny resample where every longer answer won).
    """
    a = np.zeros(y.shape[0])
    b = np.zeros(y.shape[0])
    for _ in range(iters):
        p = _sigmoid(a[:, None] + b[:, None] * z)
        w = np.maximum(p * (1.0 - p), 1e-10)
        r = y - p
        g_a = r.sum(1)
        g_b = (r * z).sum(1) - ridge * b
        h_aa = w.sum(1) + 1e-9
        h_ab = (w * z).sum(1)
        h_bb = (w * z * z).sum(1) + ridge
        det = h_aa * h_bb - h_ab**2
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        a = np.clip(a + step_a, -30, 30)
        b = np.clip(b + step_b, -30, 30)
        if max(np.abs(step_a).max(), np.abs(step_b).max()) < 1e-10:
            break
    return a, b


def length_adjusted_win_rate(
    outcomes: ArrayLike,
    len_policy: ArrayLike,
    len_baseline: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    ridge: float = 1e-3,
) -> LengthAdjustedWinRate:
    """Length-controlled win rate: a simplified AlpacaEval-LC-style adjustment (Dubois et al., COLM 2024,
    arXiv:2404.04475).

    Fits the logistic model ``P(win_i) = σ(a + b·z_i)`` with ``z_i = tanh(d_i / std(d))`` and
    ``d_i = len_policy_i − len_baseline_i`` by maximum likelihood (Newton/IRLS in numpy, ties as 0.5
    fractional targets), then reports the predicted win rate at zero length difference, ``σ(a)``: the win
    rate the policy would have if its answers were as long as the baseline's.

    Simplified relative to AlpacaEval-LC: one comparison pair (no per-model / per-instruction terms), no
    regularisation beyond a tiny ridge on ``b``. The CI is a percentile bootstrap refitting each resample.
    """
    y = _check_outcomes(outcomes)
    lp, lb = _np(len_policy), _np(len_baseline)
    _same_shape(y, lp, lb)
    z = _length_feature(lp, lb)
    a, b = _fit_logistic(y[None, :], z[None, :], ridge)
    estimate = float(_sigmoid(a)[0])
    if n_resamples > 0:
        # Keep the full-sample feature scaling so every resample estimates the same quantity. Half the usual
        # chunk: each resample's refit holds several [chunk, n] arrays.
        boot = bootstrap_replicates(lambda idx: _sigmoid(_fit_logistic(y[idx], z[idx], ridge)[0]), y.size,
                                    n_resamples, seed, batched=True, max_entries=MAX_ENTRIES // 2)
        low, high = percentile_interval(boot, confidence)
    else:
        low = high = float("nan")
    return LengthAdjustedWinRate(estimate, low, high, float(y.mean()), float(a[0]), float(b[0]))


# --------------------------------------------------------------------------------------------------
# KL and lengths
# --------------------------------------------------------------------------------------------------


def kl_estimate(policy_logps: ArrayLike, ref_logps: ArrayLike) -> KLEstimate:
    """Monte-Carlo estimates of ``KL(π ‖ π_ref)`` from samples **drawn from the policy** π.

    With ``log r = log π_ref(y) − log π(y)`` per sample:

    * k1 = ``mean(log π − log π_ref) = mean(−log r)``: unbiased, high variance, can be negative;
    * k3 = ``mean((r − 1) − log r)``: unbiased and always ≥ 0 per sample, lower variance (the k1/k3
      estimators of J. Schulman, "Approximating KL Divergence", 2020, http://joschu.net/blog/kl-approx.html).

    Inputs are per-sample log-probs (sequence sums or per-token, as long as both use the same unit).
    ``r`` is exponentiated in float64; a log-ratio beyond ~709 makes k3 infinite, signalling huge drift.
    """
    p, q = _np(policy_logps), _np(ref_logps)
    _same_shape(p, q)
    if p.size == 0:
        return KLEstimate(float("nan"), float("nan"))
    log_r = q - p
    with np.errstate(over="ignore"):
        k3 = np.expm1(log_r) - log_r  # expm1 keeps precision when r ≈ 1
    return KLEstimate(float(np.mean(-log_r)), float(np.mean(k3)))


def length_stats(lengths: ArrayLike | Sequence[int]) -> dict[str, float]:
    """``{"mean", "median", "p90", "max"}`` of response lengths (any unit). NaNs for empty input."""
    x = _np(lengths)
    if x.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "max": float(x.max()),
    }
