"""Online IPO, IPO-MD and the geometric-mixture sampler (METHODS.md §2b).

Paper: Calandriello et al., "Human Alignment of LLMs through Online Preference Optimisation", ICML 2024.
Confidence: IPO loss and mixture sampling HIGH (TRL); soft-label online-IPO form MEDIUM; the paper's
τ and β values LOW (TRL's Nash-MD default mixture coefficient is 0.5).

**Online IPO.** For each prompt x draw y, y' from the current policy (no gradient through sampling), ask
a pairwise preference model p = P(y ≻ y' | x), and regress the log-ratio difference onto the centred
preference (h = log π_θ − log π_ref, per-token averaged by default as for IPO in TRL)::

    L = ( h(y) − h(y') − (p − ½)/τ )²
    hard labels: target (I − ½)/τ = ±1/(2τ) with I = 1[p > ½]  (a tie p = ½ counts as y' winning)

**IPO-MD.** The same loss, but y and y' come from the token-level geometric mixture
π_mix ∝ π_θ^{1−β}·π_ref^{β}: at each step sample from softmax((1−β)·logits_θ + β·logits_ref). β = 0 is
online IPO, β = 1 samples from the reference. :func:`sample_pairs` implements it with one KV cache per
model (TRL's wrapper disables caching and recomputes the prefix every step).

**Online DPO / SLiC** (the paper's baselines) need no new loss: orient each sampled pair by p > ½ and feed
the existing DPO or SLiC objective.

A preference model is order-sensitive: query both orders and pass them through
:func:`symmetrized_preference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    length_normalize: bool = True,
) -> ObjectiveOutput:
    """Per-example online-IPO / IPO-MD loss (h(y) − h(y') − target)², shape [B].

    Args:
        policy_y, policy_y2, ref_y, ref_y2: [B] policy/reference log-probs of the two samples, summed over
            response tokens (then pass ``tokens_*``) or already per-token averaged (then pass
            ``length_normalize=False``).
        preference_prob: [B] p = P(y ≻ y' | x), ideally :func:`symmetrized_preference`.
        tau: IPO regulariser τ; the target margin is up to ±1/(2τ).
        hard_labels: regress onto ±1/(2τ) from 1[p > ½] instead of the soft (p − ½)/τ.
        tokens_y, tokens_y2: [B] response token counts, required when ``length_normalize``.
        length_normalize: divide each log-ratio by its token count (TRL's IPO convention; keeps τ
            meaningful across lengths).

    Metrics: ``delta`` (mean h(y) − h(y')), ``target``, ``rewards/probabilities`` (mean p),
    ``logps/y``, ``logps/y2`` (raw policy log-probs as given).
    """
    if tau <= 0:
        raise ValueError(f"IPO tau must be positive, got {tau}")
    h_y = policy_y.float() - ref_y.float()
    h_y2 = policy_y2.float() - ref_y2.float()
    if length_normalize:
        if tokens_y is None or tokens_y2 is None:
            raise ValueError("online_ipo_loss: length_normalize needs tokens_y and tokens_y2 "
                             "(or pass per-token averaged log-probs with length_normalize=False)")
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


# ---------------------------------------------------------------------------------------------- sampling


def geometric_mixture_logits(policy_logits: Tensor, ref_logits: Tensor, beta: float) -> Tensor:
    """(1−β)·policy + β·ref. Softmax of this is π_θ^{1−β}·π_ref^β renormalised (raw logits and log-probs
    differ by a per-position constant, which the softmax removes)."""
    return (1.0 - beta) * policy_logits.float() + beta * ref_logits.float()


@dataclass
class SampledPairs:
    """Two mixture samples per prompt."""

    prompt_ids: Tensor  # [B, L] the prompts, left-padded
    prompt_mask: Tensor  # [B, L]
    completions: Tensor  # [B, 2, T] sampled tokens; pad_token_id after a row's eos
    completion_mask: Tensor  # [B, 2, T] 1 on sampled tokens (eos included), 0 on padding
    logits: Tensor | None = None  # [B, 2, T, V] mixture logits before temperature, if requested


def _left_pad(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    # Decoding appends on the right, so every row's real tokens must end at the last column.
    order = torch.argsort(attention_mask.long(), dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.long().gather(1, order)


def _step(model: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor, cache) -> tuple[Tensor, object]:
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1].float(), out.cache


@torch.no_grad()
def sample_pairs(
    policy: nn.Module,
    reference: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    beta: float,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    return_logits: bool = False,
) -> SampledPairs:
    """Sample two responses per prompt from the token-level geometric mixture of policy and reference.

    Each step runs both models on the new token with their own KV cache and samples from
    softmax(((1−β)·logits_θ + β·logits_ref)/temperature); ``temperature=0`` takes the argmax. β = 0 skips
    the reference and β = 1 skips the policy. Rows stop independently at eos and are padded after it;
    decoding ends when every row has stopped or after ``max_new_tokens``. Prompts may be padded on
    either side. Both models are put in eval mode for the call (dropout off) and restored afterwards.

    Args:
        policy, reference: causal LMs sharing a vocabulary (Hugging Face ``cache=`` / ``.cache`` API).
        input_ids, attention_mask: [B, L] prompts.
        beta: mixture coefficient β ∈ [0, 1] (TRL default 0.5).
        max_new_tokens: length cap.
        temperature: softmax temperature; 0 for greedy.
        generator: torch RNG for reproducible sampling.
        eos_token_id, pad_token_id: default to the policy's config (pad falls back to eos).
        return_logits: also return the per-step mixture logits [B, 2, T, V] (tests, diagnostics).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"mixture beta must lie in [0, 1], got {beta}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    config = policy.config
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = torch.as_tensor([] if eos is None else eos, dtype=torch.long, device=input_ids.device).flatten()
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    if pad is None:
        pad = int(eos_ids[0]) if eos_ids.numel() else 0

    prompt_ids, prompt_mask = _left_pad(input_ids, attention_mask)
    ids = prompt_ids.repeat_interleave(2, dim=0)  # rows 2i and 2i+1 are the pair for prompt i
    mask = prompt_mask.repeat_interleave(2, dim=0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = ids.shape[0]

    use_policy, use_ref = beta < 1.0, beta > 0.0
    modes = (policy.training, reference.training)
    policy.eval()
    reference.eval()
    try:
        caches: list[object] = [None, None]
        finished = torch.zeros(rows, dtype=torch.bool, device=ids.device)
        tokens, alive, step_logits = [], [], []
        step_ids = ids
        for _ in range(max_new_tokens):
            policy_logits = ref_logits = None
            if use_policy:
                policy_logits, caches[0] = _step(policy, step_ids, mask, positions, caches[0])
            if use_ref:
                ref_logits, caches[1] = _step(reference, step_ids, mask, positions, caches[1])
            if policy_logits is None:
                policy_logits = torch.zeros_like(ref_logits)
            if ref_logits is None:
                ref_logits = torch.zeros_like(policy_logits)
            mixed = geometric_mixture_logits(policy_logits, ref_logits, beta)
            if temperature == 0:
                nxt = mixed.argmax(-1)
            else:
                nxt = torch.multinomial((mixed / temperature).softmax(-1), 1, generator=generator).squeeze(-1)
            nxt = torch.where(finished, pad, nxt)
            tokens.append(nxt)
            alive.append(~finished)
            if return_logits:
                step_logits.append(mixed)
            finished = finished | torch.isin(nxt, eos_ids)
            if bool(finished.all()):
                break
            step_ids = nxt[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
    finally:
        policy.train(modes[0])
        reference.train(modes[1])

    batch = prompt_ids.shape[0]
    if tokens:
        completions = torch.stack(tokens, 1).view(batch, 2, -1)
        completion_mask = torch.stack(alive, 1).long().view(batch, 2, -1)
    else:
        completions = prompt_ids.new_zeros(batch, 2, 0)
        completion_mask = completions.clone()
    logits = torch.stack(step_logits, 1).view(batch, 2, len(step_logits), -1) if step_logits else None
    return SampledPairs(prompt_ids, prompt_mask, completions, completion_mask, logits)
