"""Offline preference training from log-probs: the DPO family on pairs, KTO and BCO on binary feedback.

Every objective registered in ``alignkit.objectives`` runs through this method; several can be combined
with weights in one run as long as they take the same inputs (paired or unpaired).

Unpaired objectives get two extras here: KTO's mismatched KL rows (:func:`kl_partners`) and, for ``bco`` with
``udm: true``, BCO's underlying-distribution-matching weights (:func:`prompt_embeddings` of the frozen
starting model, a classifier fitted once by :func:`alignkit.objectives.binary.fit_udm_classifier`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from alignkit.engine.exactness import layout_support
from alignkit.engine.layouts import Group, PackedBatch, attention_implementation, build_groups, collate
from alignkit.engine.logprobs import packing_capacity, sequence_logps
from alignkit.engine.pairs import Layout, PairRows, pair_batch, score_pair_batch, split_scores
from alignkit.objectives import PairLogps, UnpairedLogps, get_objective
from alignkit.objectives.base import ObjectiveSpec
from alignkit.objectives.binary import fit_udm_classifier, udm_density_ratio
from alignkit.train.config import TrainConfig
from alignkit.train.data import load_run_data
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput

# Objectives this method scores on prompt + response tokens (the joint log-prob of instruction and response);
# DOVE, the joint objective, has its own method (``dove``), which always does.
JOINT_OBJECTIVES: set[str] = set()
# BCO's UDM classifier is fitted on at most this many prompts per class (TRL's prompt_sample_size default).
UDM_SAMPLE_SIZE = 1024


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
        self._partners: dict[int, tuple[list, list[int]]] = {}
        self.udm = any(params.get("udm") for _, _, params in self.objectives)
        self._splits: tuple[list, list] = ([], [])
        self._udm_prob: dict[tuple[int, ...], float] = {}
        self._udm_accuracy: float | None = None
        self._pad_id = 0

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
        self._splits = (data.train_encoded, data.eval_encoded)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return data.train_encoded, data.eval_encoded

    def wrap_model(self, model):
        """Fits BCO's UDM classifier here, when asked for: the loop calls this before any checkpoint is
        restored, so the embeddings come from the starting weights (a fresh LoRA adapter is a no-op) and a
        resumed run fits the very same classifier."""
        if self.udm:
            self.fit_udm(model)
        return model

    def reference_rows(self, items: list) -> Rows:
        """Two rows per example, in index order: (chosen, rejected), or (completion, KL partner)."""
        rows: Rows = []
        if not self.paired:
            for item, kl_row in zip(items, self.kl_rows(items, list(range(len(items)))), strict=True):
                rows += [(item.prompt, item.response), kl_row]
            return rows
        for item in items:
            pair = self.pair_rows(item)
            second = pair.prompt if pair.prompt_rejected is None else pair.prompt_rejected
            rows += [(pair.prompt, pair.chosen), (second, pair.rejected)]
        return rows

    def kl_rows(self, items: list, indices: list[int]) -> list[tuple[list[int], list[int]]]:
        """KTO's mismatched rows for ``indices``: each example's prompt with its :func:`kl_partners` response
        (computed once per split; the precomputed reference scores exactly these rows)."""
        cached = self._partners.get(id(items))
        if cached is None or cached[0] is not items:
            partners = kl_partners(items, self.config.seed)
            if any(items[i].prompt == items[j].prompt for i, j in enumerate(partners)):
                self._log("KTO KL baseline: the split has a single distinct prompt, so the KL rows pair it with "
                          "its own other responses")
            cached = self._partners[id(items)] = (items, partners)
        partners = cached[1]
        return [(items[i].prompt, items[partners[i]].response) for i in indices]

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        build = self.pair_logps if self.paired else self.unpaired_logps
        logps, num_tokens = build(ctx, items, indices, precomputed)
        weights = self.udm_weights(items, indices).to(ctx.device) if self.udm else None
        loss, metrics = combine_objectives(self.objectives, logps, state, training, weights)
        if self.udm and self._udm_accuracy is not None:
            metrics["udm/classifier_accuracy"] = self._udm_accuracy
        return StepOutput(loss, metrics, num_tokens)

    # ------------------------------------------------------------ BCO's underlying distribution matching

    def fit_udm(self, model) -> None:
        """Fit the UDM classifier on up to ``UDM_SAMPLE_SIZE`` train prompts per class (seeded sample) and
        store P(desirable | prompt) for every undesirable prompt of both splits (desirable weights are 1)."""
        train, evaluation = self._splits
        by_class = [[i for i, it in enumerate(train) if bool(it.label) == desirable] for desirable in (True, False)]
        if not all(by_class):
            raise ValueError("bco with udm: true needs desirable and undesirable train examples")
        generator = torch.Generator().manual_seed(self.config.seed)
        samples = [[members[j] for j in torch.randperm(len(members), generator=generator)[:UDM_SAMPLE_SIZE].tolist()]
                   for members in by_class]
        wanted = {tuple(train[i].prompt) for sample in samples for i in sample}
        wanted |= {tuple(it.prompt) for it in (*train, *evaluation) if not it.label}
        prompts = sorted(wanted)
        self._log(f"udm: embedding {len(prompts)} prompts with the starting model (mean-pooled last hidden states)")
        embedded = prompt_embeddings(model, [list(p) for p in prompts], self._pad_id, self.config.batch_size)
        row = {p: k for k, p in enumerate(prompts)}
        desirable, undesirable = ([row[tuple(train[i].prompt)] for i in sample] for sample in samples)
        classifier = fit_udm_classifier(embedded[desirable], embedded[undesirable])
        self._udm_prob = dict(zip(prompts, classifier.prob_desirable(embedded).tolist(), strict=True))
        self._udm_accuracy = classifier.accuracy
        self._log(f"udm: classifier on {len(desirable)} desirable + {len(undesirable)} undesirable prompts, "
                  f"training accuracy {classifier.accuracy_desirable:.3f} / {classifier.accuracy_undesirable:.3f}")

    def udm_weights(self, items: list, indices: list[int]) -> Tensor:
        """Density ratios p/(1-p) of the examples ``indices`` (1 for desirable ones; ``bco`` clamps them)."""
        if not self._udm_prob:
            raise RuntimeError("bco udm: the classifier is fitted in wrap_model, which has not run")
        prob = torch.tensor([self._udm_prob[tuple(items[i].prompt)] if not items[i].label else 0.5 for i in indices])
        return torch.where(torch.tensor([bool(items[i].label) for i in indices]), 1.0, udm_density_ratio(prob))

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
                            row_tokens=packing_capacity(ctx.model, self.config.pack_row_tokens)).to(ctx.device)

    def pair_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                   ) -> tuple[PairLogps, int]:
        """Chosen and rejected go through one forward pass (``alignkit.engine.pairs``): as [prompt | chosen |
        rejected] rows sharing the prompt (default), or as padded [prompt | response] rows; the live reference
        scores the very same laid-out batch."""
        capacity = packing_capacity(ctx.model, self.config.pack_row_tokens)
        laid_out = pair_batch([self.pair_rows(items[i]) for i in indices], ctx.pad_id, self.layout(ctx),
                              self.score_prompt, pack=self.config.packing, row_tokens=capacity, device=ctx.device)
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
        """KTO's KL estimate uses mismatched rows: example i's prompt with the completion of its
        :func:`kl_partners` example, whose prompt differs (chosen from the dataset rather than the batch, so their
        reference log-probs can be precomputed too). Example i's row and its KL row share the prompt, so the
        reference scores both in one shared-prefix row; the policy keeps two forwards, since only one of them
        needs gradients."""
        rows = [(items[i].prompt, items[i].response) for i in indices]
        kl_rows = self.kl_rows(items, indices)
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


def kl_partners(items: list, seed: int) -> list[int]:
    """The index of each example's KL partner, an example with a different prompt (KTO's mismatched pairs).

    Examples are grouped by prompt (token ids); the groups are put in a seeded random order and each group is
    paired with the next one, cyclically: a derangement, so no group is paired with itself. The k-th example
    of a group takes the response of the (k mod size)-th example of its partner group. The result depends only
    on the data and the seed: it is the same after a resume and for the precomputed reference rows. A split
    with one distinct prompt has no other prompt to pair with; its examples then take the next example's.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(tuple(item.prompt), []).append(i)
    members = list(groups.values())
    if len(members) < 2:
        return [(i + 1) % len(items) for i in range(len(items))]
    order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist()
    partners = [0] * len(items)
    for position, group in enumerate(order):
        theirs = members[order[(position + 1) % len(order)]]
        for k, i in enumerate(members[group]):
            partners[i] = theirs[k % len(theirs)]
    return partners


@torch.no_grad()
def prompt_embeddings(model: nn.Module, prompts: list[list[int]], pad_id: int, batch_size: int = 16) -> Tensor:
    """Prompt embeddings for BCO's UDM classifier, [N, hidden] float32 on the CPU: the model's last hidden
    states mean-pooled over each prompt's tokens, in eval mode (no dropout). The BCO paper and TRL embed
    prompts with a separate sentence-embedding model; alignkit runs offline and uses the frozen starting model,
    which needs no second model and sees the prompts exactly as the policy's tokenizer and chat template do."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pooled: list[Tensor | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # little padding per batch
    try:
        for start in range(0, len(order), max(batch_size, 1)):
            chunk = order[start:start + max(batch_size, 1)]
            batch = collate([(prompts[i], []) for i in chunk], pad_id).to(device)
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
            mask = batch.attention_mask.unsqueeze(-1).float()
            means = (out.hidden_states[-1].float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            for j, i in enumerate(chunk):
                pooled[i] = means[j].cpu()
    finally:
        model.train(was_training)
    return torch.stack(pooled)  # type: ignore[arg-type]


def combine_objectives(objectives, logps: PairLogps | UnpairedLogps, objective_state: dict, training: bool,
                       udm_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the objectives' mean losses; metrics keep TRL names (first objective wins a clash).
    ``udm_weights`` go to the objectives configured with ``udm: true`` (BCO)."""
    total, metrics = None, {}
    for spec, weight, params in objectives:
        kwargs = dict(params)
        if kwargs.get("udm"):
            kwargs["weights"] = udm_weights
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
