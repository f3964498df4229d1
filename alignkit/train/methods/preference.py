"""Offline preference training from log-probs: the DPO family on pairs, KTO and BCO on binary feedback.

Every objective registered in ``alignkit.objectives`` runs through this method; several can be combined
with weights in one run as long as they take the same inputs (paired or unpaired).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from alignkit.objectives import PairLogps, UnpairedLogps, get_objective
from alignkit.train.config import TrainConfig
from alignkit.train.data import load_run_data
from alignkit.train.logprobs import collate, sequence_logps
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput

JOINT_OBJECTIVES = {"dove"}  # score prompt + response tokens: the joint log-prob of instruction and response


class PreferenceMethod(Method):
    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.objectives = [(get_objective(o.name), o.weight, o.params) for o in config.objectives]
        kinds = {spec.inputs for spec, _, _ in self.objectives}
        if len(kinds) > 1:
            raise ValueError(f"objectives {[o.name for o in config.objectives]} mix paired and unpaired inputs")
        self.paired = kinds == {"pair"}
        self.needs_reference = any(spec.needs_reference for spec, _, _ in self.objectives)

    @property
    def score_prompt(self) -> bool:
        return any(o.name in JOINT_OBJECTIVES for o in self.config.objectives)

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = load_run_data(self.config, tokenizer, run_dir, unpaired=not self.paired, log=log)
        return data.train_encoded, data.eval_encoded

    def reference_rows(self, items: list) -> Rows:
        """Two rows per example, in index order: (chosen, rejected), or (completion, KL partner)."""
        rows: Rows = []
        for i, item in enumerate(items):
            if self.paired:
                rows += [(item.prompt, item.chosen), (item.prompt, item.rejected)]
            else:
                rows += [(item.prompt, item.response), kl_partner(items, i)]
        return rows

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        build = self.pair_logps if self.paired else self.unpaired_logps
        logps, num_tokens = build(ctx, items, indices, precomputed)
        loss, metrics = combine_objectives(self.objectives, logps, state, training)
        return StepOutput(loss, metrics, num_tokens)

    def pair_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                   ) -> tuple[PairLogps, int]:
        """Chosen and rejected rows go through one forward pass."""
        batch_items = [items[i] for i in indices]
        rows = [(p.prompt, p.chosen) for p in batch_items] + [(p.prompt, p.rejected) for p in batch_items]
        batch = collate(rows, ctx.pad_id, self.score_prompt).to(ctx.device)
        out = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype)
        n = len(indices)
        ref_c = ref_r = None
        if precomputed is not None:
            idx = torch.tensor(indices)
            ref_c, ref_r = precomputed.lookup(2 * idx).to(ctx.device), precomputed.lookup(2 * idx + 1).to(ctx.device)
        elif ctx.reference is not None:
            ref = ctx.reference.logps(batch)
            ref_c, ref_r = ref.logps[:n], ref.logps[n:]
        logps = PairLogps(out.logps[:n], out.logps[n:], out.tokens[:n], out.tokens[n:], ref_c, ref_r,
                          out.logits_mean[:n], out.logits_mean[n:])
        return logps, batch.num_tokens

    def unpaired_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                       ) -> tuple[UnpairedLogps, int]:
        """KTO's KL estimate uses mismatched rows: example i's prompt with example i+1's completion (of the
        dataset rather than the batch, so their reference log-probs can be precomputed too)."""
        rows = [(items[i].prompt, items[i].response) for i in indices]
        kl_rows = [kl_partner(items, i) for i in indices]
        batch = collate(rows, ctx.pad_id, self.score_prompt).to(ctx.device)
        kl_batch = collate(kl_rows, ctx.pad_id, self.score_prompt).to(ctx.device)
        out = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype)
        with torch.no_grad():
            kl_policy = sequence_logps(ctx.model, kl_batch, ctx.chunk_size, ctx.autocast_dtype).logps
        ref = kl_ref = None
        if precomputed is not None:
            idx = torch.tensor(indices)
            ref, kl_ref = precomputed.lookup(2 * idx).to(ctx.device), precomputed.lookup(2 * idx + 1).to(ctx.device)
        elif ctx.reference is not None:
            ref, kl_ref = ctx.reference.logps(batch).logps, ctx.reference.logps(kl_batch).logps
        label = torch.tensor([bool(items[i].label) for i in indices], device=ctx.device)
        logps = UnpairedLogps(out.logps, out.tokens, label, ref, kl_policy, kl_ref, out.logits_mean)
        return logps, batch.num_tokens + kl_batch.num_tokens


def kl_partner(items: list, index: int) -> tuple[list[int], list[int]]:
    return items[index].prompt, items[(index + 1) % len(items)].response


def combine_objectives(objectives, logps: PairLogps | UnpairedLogps, objective_state: dict, training: bool
                       ) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the objectives' mean losses; metrics keep TRL names (first objective wins a clash)."""
    total, metrics = None, {}
    for spec, weight, params in objectives:
        kwargs = dict(params)
        if spec.stateful:
            kwargs["state"] = objective_state.setdefault(spec.name, {})
            kwargs["training"] = training
        out = spec.fn(logps, **kwargs)
        loss = out.loss.mean()
        total = weight * loss if total is None else total + weight * loss
        if len(objectives) > 1:
            metrics[f"loss/{spec.name}"] = loss.item()
        for key, value in out.metrics.items():
            metrics.setdefault(key, float(value))
    if isinstance(logps, PairLogps):  # likelihood ranking, not the implicit-reward ranking (METHODS.md §17)
        metrics["ranking/accuracy"] = (logps.chosen > logps.rejected).float().mean().item()
        metrics["ranking/accuracy_normalized"] = (
            (logps.chosen / logps.chosen_tokens) > (logps.rejected / logps.rejected_tokens)
        ).float().mean().item()
    metrics["loss"] = total.item()
    return total, metrics
