"""GRAO training: groups of policy samples scored against the dataset's reference answer.

Paper: Wang et al. (AntGroup), "Learning to Align, Aligning to Learn: A Unified Approach for Self-Optimized
Alignment", arXiv 2508.07750v1, 2025. The loss is the paper's Group Direct Alignment objective (Eq. 2-4),
written once in :func:`alignkit.objectives.grao.grao_loss`, which also states what its "alignment
regulariser" reduces to (a rescaling of exploration by 1 + λ)::

    Â = (r − mean(r_1..r_G)) / (std(r_1..r_G) + eps),   ℓ(o) = (1/|o|)·log π_θ(o|x)
    L_GRAO = −(1/G) Σ_i [Â_i·ℓ(o_i) + β·Â_y·ℓ(y) + λ·Â_i·(ℓ(o_i) − ℓ(y))]

Per micro-batch of prompts: draw G responses per prompt from the current policy (no gradient, batched);
score them and the dataset's chosen response y with a reward source (the synthetic verifiers by default, or
a reward model); one forward pass over the G samples and y gives the per-token mean log-probs ℓ. One gradient
step per sampled batch, as the paper's objective has no importance ratio.

Defaults (paper): G = 8, β = 0.5, λ = 0.6; eps = 1e-6, advantages normalised over the G samples (Eq. 4);
reward "verifier", max_new_tokens 48, temperature 1.0 (the paper samples at 0.7; the example config does).
``kl_coef`` adds an optional k3 KL(π_θ‖π_ref) penalty that is **not** part of GRAO (default 0, off).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.objectives.grao import grao_loss
from alignkit.rewards import build_source
from alignkit.train.config import TrainConfig
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method
from alignkit.train.methods.online import (
    PromptItem,
    ReferencePolicy,
    SampledParams,
    decode,
    float_metrics,
    load_prompt_items,
    sample_eval,
    sample_responses,
    step_generator,
    unwrap_model,
)


class GRAOParams(SampledParams):
    group_size: int = Field(8, ge=2, description="G: policy samples per prompt (paper: 8)")
    beta: float = Field(0.5, ge=0, description="β: weight of the imitation term β·Â_y·ℓ(y) (paper: 0.5)")
    lam: float = Field(0.6, ge=0, description="λ: weight of the alignment regulariser, which rescales exploration "
                                              "by 1 + λ (paper: 0.6)")
    eps: float = Field(1e-6, gt=0, description="added to the group's reward std; groups with std <= eps are skipped")
    include_reference: bool = Field(False, description="normalise advantages over the G samples and y (default: "
                                                       "the G samples, the paper's Eq. 4)")
    kl_coef: float = Field(0.0, ge=0, description="optional k3 KL(π_θ‖π_ref) penalty, not part of GRAO (0: off)")
    reward: str | dict[str, Any] | list[Any] = Field(
        "verifier", description="scalar reward source: verifier, {type: reward_model, model: ...}, module:attr, "
                                "or a list of them (summed, each with an optional weight)")


def k3_kl(policy_tokens: torch.Tensor, reference_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the per-token mean of exp(r) − r − 1, r = log π_ref − log π_θ: GRPO's k3, which
    is non-negative, unbiased for KL(π_θ‖π_ref) on policy samples and differentiable through log π_θ."""
    r = torch.where(mask, reference_tokens - policy_tokens, 0.0)
    k3 = torch.where(mask, torch.exp(r) - r - 1, 0.0)
    return (k3.sum(1) / mask.sum(1).clamp(min=1)).mean()


@register_method("grao", params=GRAOParams)
class GRAOMethod(Method):
    """Parameters: :class:`GRAOParams` (defaults in the module docstring). Data: preference pairs; the prompt
    and the chosen response (the reference answer y) are used.

    A reference model is used only for the KL penalty and the logged KL; ``reference: none`` skips it
    (allowed while ``kl_coef`` is 0).
    """

    precomputable_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, GRAOParams)
        self.kl_coef = self.params.kl_coef
        self.needs_reference = self.kl_coef > 0 or config.reference != "none"
        self.source = None

    def reward_source(self, ctx: BatchContext):
        if self.source is None:
            self.source = build_source(self.params.reward, device=ctx.device)
            if not callable(getattr(self.source, "rewards", None)):
                raise ValueError("grao needs scalar rewards (a verifier or reward model), not a pairwise judge")
        return self.source

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        return load_prompt_items(self.config, tokenizer, run_dir, log)

    def reference_rows(self, items: list) -> Rows:
        raise NotImplementedError("grao's reference scores the policy's own samples; it cannot be precomputed")

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        batch: list[PromptItem] = [items[i] for i in indices]
        n, g = len(batch), self.params.group_size
        source = self.reward_source(ctx)
        gen = step_generator(ctx, self.config.seed, state, "grao", training, salt=indices[0])
        groups = sample_responses(unwrap_model(ctx.model), None, [it.prompt_ids for it in batch], g, 0.0,
                                  self.params.max_new_tokens, self.params.temperature, gen,
                                  ctx.pad_id, ctx.tokenizer.eos_token_id, ctx.device)
        samples = [s for group in groups for s in group]  # prompt-major: row i*G + j
        prompts = [it.prompt for it in batch for _ in range(g)]
        rewards = source.rewards(prompts + [it.prompt for it in batch],
                                 [decode(ctx.tokenizer, s) for s in samples] + [it.reference for it in batch])
        rewards = rewards.float().to(ctx.device)

        rows = [(batch[i // g].prompt_ids, s) for i, s in enumerate(samples)]
        rows += [(it.prompt_ids, it.reference_ids) for it in batch]
        seq = collate(rows, ctx.pad_id).to(ctx.device)
        want_tokens = self.kl_coef > 0
        out = sequence_logps(ctx.model, seq, ctx.chunk_size, ctx.autocast_dtype, return_token_logps=want_tokens)
        ell = out.logps / out.tokens.clamp(min=1)
        result = grao_loss(ell[:n * g].view(n, g), ell[n * g:], rewards[:n * g].view(n, g), rewards[n * g:],
                           beta=self.params.beta, lam=self.params.lam, eps=self.params.eps,
                           include_reference=self.params.include_reference)
        loss = result.loss.mean()
        metrics = float_metrics(result.metrics)

        if ctx.reference is not None:
            reference = ReferencePolicy(ctx.reference, ctx.chunk_size, ctx.autocast_dtype)
            sample_seq = collate(rows[:n * g], ctx.pad_id).to(ctx.device)
            ref = reference.logps(sample_seq, return_token_logps=want_tokens)
            metrics["kl"] = (out.logps[:n * g].detach() - ref.logps).mean().item()
            if want_tokens:
                # Rows start at column 0 in both batches, so the sample batch's columns are a prefix.
                mask = sample_seq.target_mask[:, 1:]
                policy_tokens = out.token_logps[:n * g, :mask.shape[1]]
                kl = k3_kl(policy_tokens, ref.token_logps, mask)
                loss = loss + self.kl_coef * kl
                metrics["kl_k3"] = kl.item()
        with torch.no_grad():
            metrics.update({
                "loss": loss.item(),
                "response_length": out.tokens[:n * g].mean().item(),
                "logps/reference_answer": ell[n * g:].mean().item(),
                "logps/samples": ell[:n * g].mean().item(),
                "reference_reward_mean": rewards[n * g:].mean().item(),
            })
        return StepOutput(loss, metrics, seq.num_tokens)

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        return sample_eval(self, ctx, items, batch_size, self.reward_source(ctx),
                           self.params.max_new_tokens, self.params.temperature)


__all__ = ["GRAOMethod", "GRAOParams", "k3_kl"]
