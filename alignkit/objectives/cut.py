"""CUT: Contrastive Unlikelihood Training (confidence HIGH).

Paper: Xu, Cai, Zhang, Lam, Shi, "Reasons to Reject? Aligning Language Models with Judgments", Findings of
ACL 2024, arXiv 2312.14591. Reference code: ``github.com/wwxu21/CUT`` (``modeling_llama_unlikelihood.py``).

Data are triplets (instruction x, response y, judgment j). A response is *positive* when it has no
judgment (or scores >= 7) and *negative* otherwise. A negative response is scored twice in one batch:

* with the judgment in context (the "Align-N" template: the response *matches* its judgment), and
* without it (the plain template; "Misalign-N").

A token is *inappropriate* when the judgment makes it much more likely::

    ratio_t = p_θ(y_t | x, j, y_<t) / p_θ(y_t | x, y_<t)          (detached, current model)
    flagged_t  iff  ratio_t > λ

Per negative example (T = number of response tokens)::

    L_MLE = −(1/T) Σ_t log p_θ(y_t | x, j, y_<t)
    L_UL  = −(1/T) Σ_t [ flagged_t · α · log(1 − p_t + 1e-5) + (1 − flagged_t) · log p_t ]
            with p_t = p_θ(y_t | x, y_<t)
    L_CUT = (L_MLE + L_UL) / 2

A positive example contributes plain MLE only: −(1/T) Σ_t log p_θ(y_t | x, y_<t).

Defaults are the code defaults λ = 1.1, α = 0.1. The repo's scripts use λ = 1.1, α = 1.0 for online
iterative alignment and λ = 1.2, α = 0.5 offline (Shepherd).

Inputs are **per-token** log-probs of the actual response tokens, [B, T], with both streams aligned on the
response positions (the same y tokenised identically after two different prompts). ``mask`` marks the
response tokens. For positive rows the with-judgment stream is ignored, so the loop may pass anything
finite there (zeros, or the plain stream again).

Difference from the reference code: the repo averages MLE over the whole micro-batch but UL over negatives
only, and halves per batch. Here every example gets its own loss as written above, so the loop's mean over
examples weighs a negative and a positive example equally.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, mean

UL_EPS = 1e-5  # keeps log(1 − p) finite when the model is certain of a flagged token
_MAX_LOG_RATIO_METRIC = 30.0  # ratio metric only: p_without can be ~0, so the raw ratio may overflow


def cut_flags(
    logp_with_judgment_tokens: Tensor,
    logp_without_tokens: Tensor,
    mask: Tensor,
    threshold: float = 1.1,
) -> Tensor:
    """Inappropriate-token mask [B, T]: exp(lp_with − lp_without) > threshold on response tokens.

    Compared in log space (lp_with − lp_without > log λ), which is the same test without overflow.
    Detached: the flags are a data-dependent selection, not something to differentiate.
    """
    if threshold <= 0:
        raise ValueError(f"CUT threshold must be positive, got {threshold}")
    diff = (logp_with_judgment_tokens.detach().float() - logp_without_tokens.detach().float())
    return (diff > math.log(threshold)) & mask.bool()


def cut_loss(
    token_logp_with_judgment: Tensor,
    token_logp_without: Tensor,
    mask: Tensor,
    is_negative: Tensor,
    threshold: float = 1.1,
    unlikelihood_weight: float = 0.1,
) -> ObjectiveOutput:
    """Per-example CUT loss [B] (formula in the module docstring).

    Args:
        token_logp_with_judgment: [B, T] log p_θ(y_t | x, j, y_<t); only read on negative rows.
        token_logp_without: [B, T] log p_θ(y_t | x, y_<t).
        mask: [B, T] response-token mask (bool or 0/1).
        is_negative: [B] bool, True for responses that carry a judgment.
        threshold: λ, the ratio above which a token counts as inappropriate.
        unlikelihood_weight: α, the weight of the unlikelihood term on flagged tokens.

    Metrics: ``mle_loss`` (the MLE part, averaged over all examples: plain MLE for positives, L_MLE for
    negatives), ``ul_loss`` (L_UL over negatives), ``flagged_fraction`` (share of response tokens
    flagged, averaged over negatives), ``mean_ratio`` (mean ratio over negatives' response tokens, with
    the log-ratio capped at 30 so one near-impossible token cannot make it inf).
    """
    mask = mask.bool()
    neg = is_negative.bool()
    neg_tokens = mask & neg[:, None]
    # Zero the positions that are not read so padding or a dummy stream cannot inject NaN into the sums.
    lp_with = token_logp_with_judgment.float().masked_fill(~neg_tokens, 0.0)
    lp_without = token_logp_without.float().masked_fill(~mask, 0.0)
    n_tokens = mask.sum(-1).clamp(min=1).float()

    flags = cut_flags(lp_with, lp_without, neg_tokens, threshold)

    plain_mle = -lp_without.sum(-1) / n_tokens
    judged_mle = -lp_with.sum(-1) / n_tokens
    # −expm1(lp) is 1 − p without the cancellation error of 1 − exp(lp) near p = 1.
    log_one_minus_p = torch.log(-torch.expm1(lp_without) + UL_EPS)
    ul_tokens = torch.where(flags, unlikelihood_weight * log_one_minus_p, lp_without)
    ul = -torch.where(mask, ul_tokens, 0.0).sum(-1) / n_tokens

    loss = torch.where(neg, (judged_mle + ul) / 2, plain_mle)

    with torch.no_grad():
        log_ratio = (lp_with - lp_without).clamp(max=_MAX_LOG_RATIO_METRIC)
        metrics = {
            "mle_loss": mean(torch.where(neg, judged_mle, plain_mle)),
            "ul_loss": mean(ul[neg]),
            "flagged_fraction": mean((flags.sum(-1) / n_tokens)[neg]),
            "mean_ratio": mean(log_ratio.exp()[neg_tokens]),
            "negative_fraction": mean(neg.float()),
        }
    return ObjectiveOutput(loss=loss, metrics=metrics)
