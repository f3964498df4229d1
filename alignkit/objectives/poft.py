"""PoFT: Preference-Oriented supervised Fine-Tuning ([reconstruction], confidence LOW-MEDIUM).

Paper: Fan et al., "Favoring Target Model Over Aligned LLMs", AAAI 2025, arXiv 2412.12865.

Ordinary SFT data (x, y) plus M frozen *aligned* LLMs A_1..A_M that only score y. The target model on a
sample is the BT "winner" and the aligned models are the "loser", with length-normalised log-likelihoods
as scores::

    s_θ(x,y) = (1/|y|) Σ_t log π_θ(y_t | x, y_<t)
    s_A(x,y) = (1/M) Σ_m (1/|y|) Σ_t log π_{A_m}(y_t | x, y_<t)      (frozen; precompute offline)
    L_PoFT   = −log σ( (s_θ − s_A) / temperature )

The gradient is the SFT gradient of s_θ reweighted by σ((s_A − s_θ)/temperature)/temperature: samples
the aligned models find likely get more weight, noisy ones less, and ones the target already fits saturate.

What is reconstructed: the per-token normalisation and the temperature (default 1.0, i.e. none) are not
confirmed against the paper. The whole formula lives in :func:`poft_logit` so it can be corrected in one
place. Aligned models must share the target's tokenizer, or each scores y with its own tokenisation and
normalises by its own token count (see :func:`aligned_model_scores`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, mean


def aligned_model_scores(aligned_logps_sum: Tensor, aligned_tokens: Tensor) -> Tensor:
    """s_A [B] from the aligned models' summed log-probs [M, B] and token counts ([M, B] or [B])."""
    return (aligned_logps_sum.float() / aligned_tokens.float().clamp(min=1.0)).mean(0)


def poft_logit(s_theta: Tensor, s_aligned: Tensor, temperature: float = 1.0) -> Tensor:
    """The BT logit of "target beats the aligned models": (s_θ − s_A) / temperature. [reconstruction]"""
    return (s_theta - s_aligned) / temperature


def poft_loss(
    policy_logps_sum: Tensor,
    tokens: Tensor,
    aligned_scores: Tensor,
    temperature: float = 1.0,
) -> ObjectiveOutput:
    """Per-example PoFT loss −log σ((s_θ − s_A)/temperature), shape [B].

    Args:
        policy_logps_sum: [B] policy log-prob of y summed over response tokens.
        tokens: [B] response token counts (empty responses count as one token).
        aligned_scores: [B] s_A, the precomputed mean per-token log-prob averaged over aligned models.
        temperature: divides the score difference; 1.0 reproduces the plain BT form.

    Metrics: ``s_theta``, ``s_aligned``, ``weight`` (mean σ((s_A − s_θ)/temperature), the SFT reweighting
    factor; equals σ(s_A − s_θ) at the default temperature) and ``nll`` (mean per-token SFT cross-entropy
    −s_θ, for comparison with a plain SFT run).
    """
    if temperature <= 0:
        raise ValueError(f"PoFT temperature must be positive, got {temperature}")
    s_theta = policy_logps_sum.float() / tokens.float().clamp(min=1.0)
    s_aligned = aligned_scores.float()
    logit = poft_logit(s_theta, s_aligned, temperature)
    loss = -F.logsigmoid(logit)
    metrics = {
        "s_theta": mean(s_theta.detach()),
        "s_aligned": mean(s_aligned.detach()),
        "weight": mean(F.sigmoid(-logit.detach())),
        "nll": mean(-s_theta.detach()),
    }
    return ObjectiveOutput(loss=loss, metrics=metrics)
