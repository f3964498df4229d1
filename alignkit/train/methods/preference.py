"""Offline preference training from log-probs: the DPO family on pairs, KTO and BCO on binary feedback.

Every objective registered in ``alignkit.objectives`` runs through this method; several can be combined
with weights in one run as long as they take the same inputs (paired or unpaired).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from alignkit.engine.exactness import layout_support
from alignkit.engine.layouts import Group, PackedBatch, attention_implementation, build_groups, collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.engine.pairs import Layout, PairRows, pair_batch, score_pair_batch, split_scores
from alignkit.objectives import PairLogps, UnpairedLogps, get_objective
from alignkit.objectives.base import ObjectiveSpec
from alignkit.train.config import TrainConfig
from alignkit.train.data import load_run_data
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput

# Objectives this method scores on prompt + response tokens (the joint log-prob of instruction and response);
# DOVE, the joint objective, has its own method (``dove``), which always does.
JOINT_OBJECTIVES: set[str] = set()


class PreferenceMethod(Method):
    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.objectives = self.objective_terms()
        kinds = {spec.inputs for spec, _, _ in self.objectives}
        if len(kinds) > 1:
            raise ValueError(f"objectives {[o.name for o in config.objectives]} mix paired and unpaired inputs")
        self.paired = kinds == {"pair"}
        self.needs_reference = any(spec.needs_reference for spec, _, _ in self.objectives)
        self._layout_cache: dict[tuple[int, str | None], Layout] = {}
        self._log: Callable[[str], None] = logging.getLogger(__name__).warning

    def objective_terms(self) -> list[tuple[ObjectiveSpec, float, dict]]:
        """(objective, weight, validated keyword arguments) for each configured objective."""
        return [(get_objective(o.name), o.weight, o.params) for o in self.config.objectives]

    @property
    def score_prompt(self) -> bool:
        return any(o.name in JOINT_OBJECTIVES for o in self.config.objectives)

    def pair_rows(self, item) -> PairRows:
        """The token ids of one paired example as the engine lays them out."""
        return PairRows(item.prompt, item.chosen, item.rejected)

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        self._log = log
        data = load_run_data(self.config, tokenizer, run_dir, unpaired=not self.paired, log=log)
        return data.train_encoded, data.eval_encoded

    def reference_rows(self, items: list) -> Rows:
        """Two rows per example, in index order: (chosen, rejected), or (completion, KL partner)."""
        rows: Rows = []
        for i, item in enumerate(items):
            if self.paired:
                pair = self.pair_rows(item)
                second = pair.prompt if pair.prompt_rejected is None else pair.prompt_rejected
                rows += [(pair.prompt, pair.chosen), (second, pair.rejected)]
            else:
                rows += [(item.prompt, item.response), kl_partner(items, i)]
        return rows

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        build = self.pair_logps if self.paired else self.unpaired_logps
        logps, num_tokens = build(ctx, items, indices, precomputed)
        loss, metrics = combine_objectives(self.objectives, logps, state, training)
        return StepOutput(loss, metrics, num_tokens)

    # ------------------------------------------------------------ batch layout

    def layout(self, ctx: BatchContext) -> Layout:
        """``shared_prefix`` (one row per prompt with all its responses) when configured and exact for this
        model, else ``padded``; decided once per model and attention implementation, with the reason for a
        fall-back logged."""
        if self.config.layout == "padded":
            return "padded"
        key = (id(ctx.model), attention_implementation(ctx.model))
        if key not in self._layout_cache:
            reason = layout_support(ctx.model, ctx.pad_id)
            if reason:
                self._log(f"layout: shared_prefix is not exact for this model ({reason}); using padded rows")
            self._layout_cache[key] = "padded" if reason else "shared_prefix"
        return self._layout_cache[key]

    def _packed(self, groups: list[Group], ctx: BatchContext) -> PackedBatch:
        return build_groups(groups, ctx.pad_id, self.score_prompt, pack=self.config.packing,
                            row_tokens=self.config.pack_row_tokens).to(ctx.device)

    def pair_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                   ) -> tuple[PairLogps, int]:
        """Chosen and rejected go through one forward pass (``alignkit.engine.pairs``): as [prompt | chosen |
        rejected] rows sharing the prompt (default), or as padded [prompt | response] rows; the live reference
        scores the very same laid-out batch."""
        laid_out = pair_batch([self.pair_rows(items[i]) for i in indices], ctx.pad_id, self.layout(ctx),
                              self.score_prompt, pack=self.config.packing, row_tokens=self.config.pack_row_tokens,
                              device=ctx.device)
        out = score_pair_batch(ctx.model, laid_out, ctx.chunk_size, ctx.autocast_dtype)
        ref_c = ref_r = None
        if precomputed is not None:
            idx = torch.tensor(indices)
            ref_c, ref_r = precomputed.lookup(2 * idx).to(ctx.device), precomputed.lookup(2 * idx + 1).to(ctx.device)
        elif ctx.reference is not None:
            ref = split_scores(ctx.reference.logps(laid_out.batch), laid_out)
            ref_c, ref_r = ref.chosen.logps, ref.rejected.logps
        chosen, rejected = out.chosen, out.rejected
        logps = PairLogps(chosen.logps, rejected.logps, chosen.tokens, rejected.tokens, ref_c, ref_r,
                          chosen.logits_mean, rejected.logits_mean)
        return logps, laid_out.num_tokens

    def unpaired_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                       ) -> tuple[UnpairedLogps, int]:
        """KTO's KL estimate uses mismatched rows: example i's prompt with example i+1's completion (of the
        dataset rather than the batch, so their reference log-probs can be precomputed too). Example i's row
        and its KL row share the prompt, so the reference scores both in one shared-prefix row; the policy
        keeps two forwards, since only one of them needs gradients."""
        rows = [(items[i].prompt, items[i].response) for i in indices]
        kl_rows = [kl_partner(items, i) for i in indices]
        shared = self.layout(ctx) == "shared_prefix"
        if shared and self.config.packing:
            batch = self._packed([(p, [r]) for p, r in rows], ctx)
            kl_batch = self._packed([(p, [r]) for p, r in kl_rows], ctx)
        else:
            batch = collate(rows, ctx.pad_id, self.score_prompt).to(ctx.device)
            kl_batch = collate(kl_rows, ctx.pad_id, self.score_prompt).to(ctx.device)
        out = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype)
        with torch.no_grad():
            kl_policy = sequence_logps(ctx.model, kl_batch, ctx.chunk_size, ctx.autocast_dtype).logps
        ref = kl_ref = None
        if precomputed is not None:
            idx = torch.tensor(indices)
            ref, kl_ref = precomputed.lookup(2 * idx).to(ctx.device), precomputed.lookup(2 * idx + 1).to(ctx.device)
        elif ctx.reference is not None and shared:
            both = self._packed([(p, [r, kl[1]]) for (p, r), kl in zip(rows, kl_rows, strict=True)], ctx)
            ref_both = ctx.reference.logps(both).logps.view(-1, 2)
            ref, kl_ref = ref_both[:, 0], ref_both[:, 1]
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
    if isinstance(logps, PairLogps):  # likelihood ranking (summed and per token), not the implicit-reward ranking
        metrics["ranking/accuracy"] = (logps.chosen > logps.rejected).float().mean().item()
        metrics["ranking/accuracy_normalized"] = (
            (logps.chosen / logps.chosen_tokens) > (logps.rejected / logps.rejected_tokens)
        ).float().mean().item()
    metrics["loss"] = total.item()
    return total, metrics
