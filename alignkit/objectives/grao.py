"""GRAO: Group Relative Alignment Optimization ([reconstruction], confidence LOW).

Paper: Wang et al. (AntGroup), "Learning to Align, Aligning to Learn: A Unified Approach for
Self-Optimized Alignment", arXiv 2508.07750, 2025. The paper's equations were not available; what is
confirmed is the shape: G policy samples per query scored by a reward model, GRPO-style intra-group
normalised advantages, and a reference answer y* that takes part in the group comparison.

The reconstruction implemented here::

    {o_1..o_G} ~ π_θ_old(·|x);  r_i = R(x, o_i);  r* = R(x, y*)
    Â_i, Â* = (r − mean(r_1..r_G, r*)) / std(r_1..r_G, r*)        normalised over all G+1 rewards
    ℓ(o) = (1/|o|) log π_θ(o|x)
    L_GRAO = −(1/G) Σ_i [ Â_i·ℓ(o_i)  +  Â*·ℓ(y*)  −  λ·Â_i·(ℓ(o_i) − ℓ(y*)) ]
           =  exploration            +  imitation  +  alignment
    exploration = −(1/G) Σ_i Â_i·ℓ(o_i)          (GRPO-like, no clipping)
    imitation   = −Â*·ℓ(y*)
    alignment   = +λ·(1/G) Σ_i Â_i·(ℓ(o_i) − ℓ(y*))

Choices made here: std is the unbiased (Bessel) std, as in TRL's GRPO; the denominator is std + eps; a
group whose G+1 rewards have std <= eps gets zero advantage everywhere (it carries no ranking signal).
The optional β·KL(π_θ‖π_ref) term is left to the loop.

**Caveat of the reconstruction as written.** The coefficient of ℓ(o_i) is −(1 − λ)·Â_i/G, so at λ = 1 the
sample terms cancel exactly. Since the G+1 advantages sum to zero, the loss is then −ℓ(y*)·Â*·(G−1)/G:
advantage-weighted imitation of the reference only. λ > 1 reverses the exploration signal. Sweep λ in
[0, 1); λ = 1.0 is the default only because the brief asked for it. Check against the paper before use.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, mean


class GroupAdvantages(NamedTuple):
    samples: Tensor  # [N, G]
    reference: Tensor  # [N]
    zero_variance: Tensor  # [N] bool, groups whose rewards are all (numerically) equal
    std: Tensor  # [N] the normaliser, std of the G+1 rewards


def group_advantages(rewards: Tensor, reference_rewards: Tensor, eps: float = 1e-6) -> GroupAdvantages:
    """Intra-group normalised advantages over the G sample rewards [N, G] plus the reference reward [N].

    Zero-variance groups get exactly zero advantage rather than (r − mean)/eps, which float rounding
    of the mean would turn into arbitrary ±O(1) values.
    """
    all_rewards = torch.cat([rewards.float(), reference_rewards.float()[:, None]], dim=1).detach()
    centred = all_rewards - all_rewards.mean(dim=1, keepdim=True)
    std = all_rewards.std(dim=1)
    zero_variance = std <= eps
    adv = torch.where(zero_variance[:, None], 0.0, centred / (std[:, None] + eps))
    return GroupAdvantages(adv[:, :-1], adv[:, -1], zero_variance, std)


def grao_terms(
    adv_samples: Tensor, adv_reference: Tensor, sample_ell: Tensor, reference_ell: Tensor, lam: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(exploration, imitation, alignment) per group [N]. The reconstructed formula, in one place."""
    exploration = -(adv_samples * sample_ell).mean(dim=1)
    imitation = -adv_reference * reference_ell
    alignment = lam * (adv_samples * (sample_ell - reference_ell[:, None])).mean(dim=1)
    return exploration, imitation, alignment


def grao_loss(
    sample_logps_mean: Tensor,
    reference_logps_mean: Tensor,
    rewards: Tensor,
    reference_rewards: Tensor,
    lam: float = 1.0,
    eps: float = 1e-6,
) -> ObjectiveOutput:
    """Per-group GRAO loss [N] (formula and λ caveat in the module docstring).

    Args:
        sample_logps_mean: [N, G] ℓ(o_i), per-token mean policy log-prob of each sampled response.
        reference_logps_mean: [N] ℓ(y*), per-token mean policy log-prob of the reference answer.
        rewards: [N, G] reward-model scores of the samples.
        reference_rewards: [N] reward-model score of the reference answer.
        lam: λ, the weight of the alignment term.
        eps: zero-variance threshold and std stabiliser.

    Metrics: ``reward_mean`` (mean sample reward), ``reward_std`` (mean over groups of the G+1-reward std
    used as normaliser), ``reference_beats_all_fraction`` (groups where r* exceeds every sample),
    ``zero_variance_fraction`` / ``zero_variance_groups`` (groups with no signal), and the three terms as
    ``loss/exploration``, ``loss/imitation``, ``loss/alignment``.
    """
    adv = group_advantages(rewards, reference_rewards, eps)
    exploration, imitation, alignment = grao_terms(
        adv.samples, adv.reference, sample_logps_mean.float(), reference_logps_mean.float(), lam)
    loss = exploration + imitation + alignment
    with torch.no_grad():
        r = rewards.float()
        metrics = {
            "reward_mean": mean(r),
            "reward_std": mean(adv.std),
            "reference_beats_all_fraction": mean((reference_rewards.float() > r.max(dim=1).values).float()),
            "zero_variance_fraction": mean(adv.zero_variance.float()),
            "zero_variance_groups": adv.zero_variance.sum().float(),
            "loss/exploration": mean(exploration),
            "loss/imitation": mean(imitation),
            "loss/alignment": mean(alignment),
        }
    return ObjectiveOutput(loss=loss, metrics=metrics)
