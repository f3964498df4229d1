"""Online IPO and IPO-MD losses.

Paper: Calandriello et al., "Human Alignment of Large Language Models through Online Preference
Optimisation", ICML 2024, arXiv 2403.08635. IPO itself: Azar et al., AISTATS 2024, arXiv 2310.12036.
Confidence: IPO loss and mixture sampling HIGH (TRL); soft-label online-IPO form MEDIUM; the paper's
τ and β values LOW (TRL's Nash-MD default mixture coefficient is 0.5).

**Online IPO.** For each prompt x draw y, y' from the current policy (no gradient through sampling), ask
a pairwise preference model p = P(y ≻ y' | x), and regress the log-ratio difference onto the centred
preference. As in the paper, h = log π_θ − log π_ref is the **sequence-level** log-ratio (log-probs summed
over response tokens); ``length_normalize=True`` divides each by its token count instead (TRL's convention
for offline IPO, kept as an option)::

    L = ( h(y) − h(y') − (p − ½)/τ )²
    hard labels: target (I − ½)/τ = ±1/(2τ) with I = 1[p > ½]  (a tie p = ½ counts as y' winning)

**IPO-MD.** The same loss, but y and y' come from the token-level geometric mixture
π_mix ∝ π_θ^{1−β}·π_ref^{β}: at each step sample from softmax((1−β)·logits_θ + β·logits_ref). β = 0 is
online IPO, β = 1 samples from the reference. ``alignkit.engine.generation.sample_ids`` (``reference=``,
``mixture_beta=``) implements it with one KV cache per model (TRL's wrapper disables caching and recomputes
the prefix every step).

**Online DPO / SLiC** (the paper's baselines) need no new loss: orient each sampled pair by p > ½ and feed
the existing DPO or SLiC objective.

A preference model is order-sensitive: query both orders and pass them through
:func:`symmetrized_preference`.
"""

from __future__ import annotations

from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, mean

# ---------------------------------------------------------------------------------------------- loss


def symmetrized_preference(p_forward: Tensor, p_backward: Tensor) -> Tensor:
    """Order-debiased P(y ≻ y'): the mean of P(y ≻ y') asked as (y, y') and 1 − P(y' ≻ y) asked as (y', y)."""
    return (p_forward.float() + 1.0 - p_backward.float()) / 2


def ipo_target(preference_prob: Tensor, tau: float, hard_labels: bool = False) -> Tensor:
    """Regression target (p − ½)/τ, or (1[p > ½] − ½)/τ with hard labels."""
    p = preference_prob.float()
    if hard_labels:
        p = (p > 0.5).float()
    return (p - 0.5) / tau


def online_ipo_loss(
    policy_y: Tensor,
    policy_y2: Tensor,
    ref_y: Tensor,
    ref_y2: Tensor,
    preference_prob: Tensor,
    tau: float = 0.1,
    hard_labels: bool = False,
    tokens_y: Tensor | None = None,
    tokens_y2: Tensor | None = None,
    length_normalize: bool = False,
) -> ObjectiveOutput:
    """Per-example online-IPO / IPO-MD loss (h(y) − h(y') − target)², shape [B].

    Args:
        policy_y, policy_y2, ref_y, ref_y2: [B] policy/reference log-probs of the two samples, summed over
            response tokens.
        preference_prob: [B] p = P(y ≻ y' | x), ideally :func:`symmetrized_preference`.
        tau: IPO regulariser τ; the target margin is up to ±1/(2τ).
        hard_labels: regress onto ±1/(2τ) from 1[p > ½] instead of the soft (p − ½)/τ.
        tokens_y, tokens_y2: [B] response token counts, required when ``length_normalize``.
        length_normalize: divide each log-ratio by its token count (TRL's offline-IPO convention; τ then
            reads per token). Default False: the paper's sequence-level log-ratios.

    Metrics: ``delta`` (mean h(y) − h(y')), ``target``, ``rewards/probabilities`` (mean p),
    ``logps/y``, ``logps/y2`` (raw policy log-probs as given).
    """
    if tau <= 0:
        raise ValueError(f"IPO tau must be positive, got {tau}")
    h_y = policy_y.float() - ref_y.float()
    h_y2 = policy_y2.float() - ref_y2.float()
    if length_normalize:
        if tokens_y is None or tokens_y2 is None:
            raise ValueError("online_ipo_loss: length_normalize needs tokens_y and tokens_y2")
        h_y = h_y / tokens_y.float().clamp(min=1.0)
        h_y2 = h_y2 / tokens_y2.float().clamp(min=1.0)
    target = ipo_target(preference_prob, tau, hard_labels)
    delta = h_y - h_y2
    loss = (delta - target) ** 2
    metrics = {
        "delta": mean(delta.detach()),
        "target": mean(target),
        "rewards/probabilities": mean(preference_prob.detach().float()),
        "logps/y": mean(policy_y.detach()),
        "logps/y2": mean(policy_y2.detach()),
    }
    return ObjectiveOutput(loss=loss, metrics=metrics)
