"""MAH-DPO: Multi-Action-Head DPO (confidence HIGH).

Paper: "Simultaneous Multi-objective Alignment Across Verifiable and Non-verifiable Rewards",
arXiv 2510.01167. Reference code: ``pearls-lab/multiobj-align`` (``mah_dpo/multihead_model.py``,
``mah_dpo/mahdpo_trainers.py``).

**Model.** One shared transformer backbone with K LM heads. Head 0 *is* the model's own output layer
(same storage, so tied embeddings stay tied); heads 1..K−1 are independent copies of its weights, optionally
plus N(0, perturbation_scale²) noise so they start diverse. The reference model is the same structure built
from the SFT model with the same seed, so head k of the reference equals head k of the policy at step 0.
The reference code's perturbation (scale 0.001 when enabled) also perturbs head 0 in place; that is not done
here because with tied embeddings it would perturb the input embeddings too.

**Objective.** Each preference pair carries a label per objective k: +1 (first response preferred),
−1 (second preferred) or 0 (no preference on k; contributes nothing)::

    L_k = mean_{pairs labelled on k} −log σ( β·[h^(k)(y_w) − h^(k)(y_l)] )     h^(k): log-ratio under head k
    L   = mean over objectives present in the batch of L_k

The reference trainer gives each example exactly one dimension; the vector form here generalises it.
Gradients of every objective reach the shared backbone; each head specialises.

**Inference.** ``logits = Σ_k w_k·head_k(h_t)`` with w normalised to sum 1 (default uniform). Mixing logits is
not mixing probabilities. :meth:`MultiHeadLM.ensemble_head` swaps that mixture in as the output layer, so
``model.lm.generate`` works unchanged.

Defaults (human-values script): β = 0.1, K = 3 (helpfulness, honesty, truthfulness), lr 5e-7.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.objectives.base import ObjectiveOutput, mean


class _WeightedHeads(nn.Module):
    """Output layer Σ_k w_k·head_k(h), used while generating with a head mixture."""

    def __init__(self, heads: Sequence[nn.Module], weights: Tensor):
        super().__init__()
        self.heads = list(heads)  # plain list: must not re-register the model's own parameters
        self.weights = weights

    def forward(self, hidden: Tensor) -> Tensor:
        return sum(w * head(hidden) for w, head in zip(self.weights.tolist(), self.heads, strict=True))


class MultiHeadLM(nn.Module):
    """A Hugging Face causal LM with K output heads over one shared backbone."""

    def __init__(self, lm: nn.Module, num_heads: int, perturbation_scale: float = 0.0, seed: int = 0):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.lm = lm
        self.num_heads = num_heads
        base = lm.get_output_embeddings()
        generator = torch.Generator().manual_seed(seed)
        extra = []
        for _ in range(1, num_heads):
            head = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                             device=base.weight.device, dtype=base.weight.dtype)
            with torch.no_grad():
                head.weight.copy_(base.weight)
                if base.bias is not None:
                    head.bias.copy_(base.bias)
                if perturbation_scale:
                    noise = torch.randn(base.weight.shape, generator=generator, dtype=torch.float32)
                    head.weight.add_(perturbation_scale * noise.to(head.weight))
            extra.append(head)
        self.extra_heads = nn.ModuleList(extra)

    @property
    def heads(self) -> list[nn.Module]:
        return [self.lm.get_output_embeddings(), *self.extra_heads]

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        """Final backbone hidden states [B, T, H], without running the original output layer."""
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out.last_hidden_state

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits of every head, [K, B, T, V]. K times the memory of one head; prefer
        :meth:`head_token_logps` for training."""
        hidden = self.hidden_states(input_ids, attention_mask)
        return torch.stack([head(hidden) for head in self.heads])

    def head_token_logps(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Per-head log-probs of ``labels`` [K, B, T]; one head's [B, T, V] logits alive at a time.

        ``hidden[:, t]`` must be the state that predicts ``labels[:, t]`` (caller shifts); labels < 0 give 0.
        """
        index = labels.long().clamp(min=0)[..., None]
        out = [head(hidden).float().log_softmax(-1).gather(-1, index).squeeze(-1) for head in self.heads]
        return torch.where(labels >= 0, torch.stack(out), 0.0)

    def _normalised(self, weights: Sequence[float] | Tensor | None) -> Tensor:
        if weights is None:
            return torch.full((self.num_heads,), 1.0 / self.num_heads)
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if w.numel() != self.num_heads:
            raise ValueError(f"expected {self.num_heads} head weights, got {w.numel()}")
        if w.sum() == 0:
            raise ValueError("head weights sum to 0")
        return w / w.sum()

    def head_logits(self, hidden: Tensor, weights: Sequence[float] | Tensor | None = None) -> Tensor:
        """Σ_k w_k·head_k(hidden) with w normalised to sum 1 (uniform when None): [..., V]."""
        w = self._normalised(weights)
        return _WeightedHeads(self.heads, w)(hidden)

    @contextmanager
    def ensemble_head(self, weights: Sequence[float] | Tensor | None = None) -> Iterator[None]:
        """Temporarily make the wrapped LM's output layer the weighted head mixture (e.g. for generate).

        A one-hot weight vector selects a single head (the reference code's ``generate_with_head``).
        """
        original = self.lm.get_output_embeddings()
        self.lm.set_output_embeddings(_WeightedHeads(self.heads, self._normalised(weights)))
        try:
            yield
        finally:
            self.lm.set_output_embeddings(original)


def mah_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    preference: Tensor,
    beta: float = 0.1,
    head_names: Sequence[str] | None = None,
) -> ObjectiveOutput:
    """Per-example MAH-DPO loss [B] whose batch mean is mean_{k present} L_k.

    Args:
        policy_chosen, policy_rejected: [K, B] summed log-probs of the pair's first/second response under
            each policy head ("chosen"/"rejected" name the slots; ``preference`` decides who wins).
        ref_chosen, ref_rejected: [K, B] the same under the reference model's heads.
        preference: [K, B] in {+1, −1, 0}: +1 the first response wins on objective k, −1 the second, 0 no
            preference (no loss, no metrics).
        beta: DPO β (paper 0.1).
        head_names: metric prefixes per head; default ``head{k}``.

    To return per-example losses under the contract, example b gets Σ_k 1[pref_kb ≠ 0]·ℓ_kb·B/(n_k·K_present),
    n_k the labelled count on k and K_present the number of objectives with n_k > 0; its mean over b is
    exactly mean_{k present} L_k. Examples without any label get 0.

    Metrics per head (TRL names, prefixed ``{name}/``): ``loss``, ``rewards/chosen`` and
    ``rewards/rejected`` (β·h of the winner and the loser), ``rewards/margins``, ``rewards/accuracies``,
    ``count``; plus ``objectives_present``.
    """
    k_heads = policy_chosen.shape[0]
    names = list(head_names) if head_names is not None else [f"head{k}" for k in range(k_heads)]
    if len(names) != k_heads:
        raise ValueError(f"{len(names)} head names for {k_heads} heads")
    sign = preference.float()
    present = sign != 0
    h_first = policy_chosen.float() - ref_chosen.float()
    h_second = policy_rejected.float() - ref_rejected.float()
    logits = beta * sign * (h_first - h_second)  # winner minus loser, per head
    losses = -F.logsigmoid(logits)  # [K, B]

    n_k = present.sum(dim=1)  # [K]
    k_present = (n_k > 0).sum()
    batch = policy_chosen.shape[1]
    weight = present.float() * batch / (n_k.clamp(min=1)[:, None] * k_present.clamp(min=1)).float()
    loss = (weight * losses).sum(dim=0)

    metrics: dict[str, Tensor] = {"objectives_present": k_present.float()}
    with torch.no_grad():
        winner = torch.where(sign >= 0, h_first, h_second) * beta
        loser = torch.where(sign >= 0, h_second, h_first) * beta
        for k, name in enumerate(names):
            sel = present[k]
            metrics[f"{name}/loss"] = mean(losses[k][sel])
            metrics[f"{name}/rewards/chosen"] = mean(winner[k][sel])
            metrics[f"{name}/rewards/rejected"] = mean(loser[k][sel])
            metrics[f"{name}/rewards/margins"] = mean((winner[k] - loser[k])[sel])
            metrics[f"{name}/rewards/accuracies"] = mean((winner[k] > loser[k]).float()[sel])
            metrics[f"{name}/count"] = n_k[k].float()
    return ObjectiveOutput(loss=loss, metrics=metrics)
