"""GRAO: Group Relative Alignment Optimization, the Group Direct Alignment objective as the paper writes it.

Paper: Wang et al. (AntGroup), "Learning to Align, Aligning to Learn: A Unified Approach for
Self-Optimized Alignment", arXiv 2508.07750v1, 2025, Methodology, Eq. 2-4 (the term placement agrees with
the paper's own gradient decomposition; the later ICLR 2026 submission was not read). Confidence MEDIUM-HIGH.

For a query q with reference answer y (the dataset's chosen response) and G responses o_1..o_G sampled from
π_θold, the paper maximises::

    J = (1/G) Σ_i [ Â_{o_i}·J_exp(o_i)  +  β·Â_y·J_imi(y)  +  λ·Â_{o_i}·(J_exp(o_i) − J_imi(y)) ]
          exploration               imitation         "alignment regulariser"
    J_exp(o) = (1/|o|) Σ_t log π_θ(o_t | q, o_<t)        J_imi(y) = (1/|y|) Σ_t log π_θ(y_t | q, y_<t)
    Â_{o_i} = (R(o_i) − μ_r) / σ_r,   μ_r, σ_r = mean and population std of the G sample rewards (Eq. 4)

Every term is a length-normalised (per-token mean) log-likelihood with one scalar advantage per sequence;
there is **no** importance ratio π_θ/π_θold, no clipping and no KL term. The loss here is L = −J, per group.
Defaults (paper): β = 0.5, λ = 0.6, G = 8.

**What the "alignment regulariser" reduces to.** J is linear in the two log-likelihoods, so per group::

    J = (1 + λ)·(1/G) Σ_i Â_{o_i}·J_exp(o_i)  +  [β·Â_y − λ·mean_i Â_{o_i}]·J_imi(y)

* With the statistics of Eq. 4 (the G samples only, the default) mean_i Â_{o_i} = 0 exactly: the λ term
  *equals* λ × the exploration term, value and gradient, and the reference answer drops out of it. The
  "regulariser" only rescales exploration to (1 + λ); the exploration : imitation weight goes from 1 : β to
  (1 + λ) : β.
* With y included in the statistics (``include_reference=True``), Σ_i Â_{o_i} = −Â_y, so the λ term equals
  λ × exploration + (λ/(β·G)) × imitation: again a re-weighting of the two existing terms.

Either way it adds no new gradient direction (``tests/objectives/test_grao.py`` checks both identities).

**Choices the paper leaves open.** R(y, y), the reward of the reference, is undefined in the paper: here y is
scored by the same scalar reward source as the samples, and Â_y = (R(y) − μ_r)/σ_r uses the same statistics
as the samples. σ_r gets ``eps`` added (the paper writes none), and a group whose statistics have σ_r <= eps
(every reward equal: common with a ternary judge or a pass/fail verifier) gets zero advantage everywhere, so
it is skipped rather than divided by ~0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, mean


class GroupAdvantages(NamedTuple):
    samples: Tensor  # [N, G] Â_{o_i}
    reference: Tensor  # [N] Â_y
    zero_variance: Tensor  # [N] bool, groups whose normalisation rewards are all (numerically) equal
    std: Tensor  # [N] σ_r, the population std of the normalisation rewards


def group_advantages(rewards: Tensor, reference_rewards: Tensor, eps: float = 1e-6,
                     include_reference: bool = False) -> GroupAdvantages:
    """Eq. 4 advantages ``(r − μ_r)/(σ_r + eps)`` for the G samples [N, G] and the reference answer [N].

    μ_r and σ_r (population std) are taken over the G sample rewards (Eq. 4 as written) or, with
    ``include_reference``, over the G samples plus the reference. Zero-variance groups get exactly zero
    advantage rather than (r − μ)/eps, which float rounding of μ would turn into arbitrary ±O(1) values.
    """
    samples, reference = rewards.float().detach(), reference_rewards.float().detach()
    stats = torch.cat([samples, reference[:, None]], dim=1) if include_reference else samples
    mu = stats.mean(dim=1, keepdim=True)
    std = stats.std(dim=1, unbiased=False)
    zero_variance = std <= eps
    scale = std[:, None] + eps
    adv_samples = torch.where(zero_variance[:, None], 0.0, (samples - mu) / scale)
    adv_reference = torch.where(zero_variance, 0.0, (reference - mu[:, 0]) / scale[:, 0])
    return GroupAdvantages(adv_samples, adv_reference, zero_variance, std)


def grao_terms(adv_samples: Tensor, adv_reference: Tensor, sample_ell: Tensor, reference_ell: Tensor,
               beta: float, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """(exploration, imitation, alignment) losses per group [N]: −J's three terms. The formula, in one place.

    ``sample_ell`` [N, G] is J_exp(o_i), ``reference_ell`` [N] is J_imi(y) (per-token mean log-probs).
    """
    exploration = -(adv_samples * sample_ell).mean(dim=1)
    imitation = -beta * adv_reference * reference_ell
    alignment = -lam * (adv_samples * (sample_ell - reference_ell[:, None])).mean(dim=1)
    return exploration, imitation, alignment


def grao_loss(
    sample_logps_mean: Tensor,
    reference_logps_mean: Tensor,
    rewards: Tensor,
    reference_rewards: Tensor,
    beta: float = 0.5,
    lam: float = 0.6,
    eps: float = 1e-6,
    include_reference: bool = False,
) -> ObjectiveOutput:
    """Per-group GRAO loss −J [N] (formula, its reduction and the open choices in the module docstring).

    Args:
        sample_logps_mean: [N, G] J_exp(o_i), per-token mean policy log-prob of each sampled response.
        reference_logps_mean: [N] J_imi(y), per-token mean policy log-prob of the reference answer.
        rewards: [N, G] rewards of the samples.
        reference_rewards: [N] reward of the reference answer (scored by the same source).
        beta: β, weight of the imitation term (paper: 0.5).
        lam: λ, weight of the "alignment regulariser" (paper: 0.6).
        eps: added to σ_r; groups with σ_r <= eps are skipped (zero advantage).
        include_reference: normalise over the G samples and y instead of the G samples only (Eq. 4).

    Metrics: ``reward_mean`` (mean sample reward), ``reward_std`` (mean over groups of σ_r),
    ``reference_beats_all_fraction`` (groups where R(y) exceeds every sample), ``zero_variance_fraction`` /
    ``zero_variance_groups`` (skipped groups), and the three terms as ``loss/exploration``,
    ``loss/imitation``, ``loss/alignment``.
    """
    adv = group_advantages(rewards, reference_rewards, eps, include_reference)
    exploration, imitation, alignment = grao_terms(
        adv.samples, adv.reference, sample_logps_mean.float(), reference_logps_mean.float(), beta, lam)
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
