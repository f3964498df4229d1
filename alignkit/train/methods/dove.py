"""DOVE: preference optimisation over (instruction, response) pairs with different instructions (METHODS.md §6).

Paper: Bansal et al., "Comparing Bad Apples to Good Oranges", 2024; code ``Hritikbansal/dove``.

Data are joint pairs ``(I_w, R_w) ≻ (I_l, R_l)`` (:class:`alignkit.data.synthetic_extra.JointPair`); ordinary
pairs are the conditional special case I_w = I_l, and the paper trains on the union of both. The loss is DPO
on the *joint* log-probability of the rendered prompt (template, BOS and instruction) plus the response::

    log π(I, R) = Σ_{tokens of [template + I + R]} log π(token | prefix)      (the very first token excluded)
    L = −log σ(β [(log π_θ(I_w,R_w) − log π_ref(I_w,R_w)) − (log π_θ(I_l,R_l) − log π_ref(I_l,R_l))])

For a conditional pair the prompt terms cancel and this is DPO. Each side is truncated on its own, so prompt
truncation changes the loss; a conditional pair keeps one shared prompt so the cancellation stays exact.
Any registered pair objective can replace DPO (``loss: ipo``...), applied to the joint log-probs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.data.synthetic_extra import JointPair, load_joint_pairs, make_joint_pairs
from alignkit.data.tokenize import PromptEncoder, encode_example, encode_pair
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.objectives import PairLogps, get_objective
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, read_splits
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, register_method
from alignkit.train.methods.preference import combine_objectives

METHOD_KEYS = ("loss", "conditional_fraction")  # read by the method; every other key goes to the loss


@dataclass
class EncodedJointPair:
    prompt_chosen: list[int]
    chosen: list[int]
    prompt_rejected: list[int]
    rejected: list[int]
    joint: bool
    prompt_truncated: bool = False
    response_truncated: bool = False


def encode_joint_pair(encoder: PromptEncoder, pair: JointPair, max_length: int, max_prompt_length: int
                      ) -> EncodedJointPair:
    if not pair.joint:
        e = encode_pair(encoder, pair.prompt_chosen, pair.chosen, pair.rejected, pair.system, max_length,
                        max_prompt_length)
        return EncodedJointPair(e.prompt, e.chosen, e.prompt, e.rejected, False, e.prompt_truncated,
                                e.response_truncated)
    w = encode_example(encoder, pair.prompt_chosen, pair.chosen, pair.system, max_length, max_prompt_length)
    loser = encode_example(encoder, pair.prompt_rejected, pair.rejected, pair.system, max_length, max_prompt_length)
    return EncodedJointPair(w.prompt, w.response, loser.prompt, loser.response, True,
                            w.prompt_truncated or loser.prompt_truncated,
                            w.response_truncated or loser.response_truncated)


def cat_pair_logps(parts: list[PairLogps]) -> PairLogps:
    fields = PairLogps.__dataclass_fields__
    return PairLogps(**{name: None if getattr(parts[0], name) is None else
                        torch.cat([getattr(p, name) for p in parts]) for name in fields})


@register_method("dove")
class DoveMethod(Method):
    """Config: ``objectives: [{name: dove, beta: 0.1}]`` plus optional ``loss`` (a pair objective, default
    ``dpo``; the remaining keys are its parameters) and ``conditional_fraction`` (synthetic data only: the
    share of pairs kept conditional, default 0.5). Data: ``data.train`` is ``synthetic`` or a joint-pair file
    (see :func:`alignkit.data.synthetic_extra.load_joint_pairs`)."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        if len(config.objectives) != 1:
            raise ValueError("dove runs alone: give one objective, e.g. [{name: dove, beta: 0.1}]")
        objective = config.objectives[0]
        params = objective.params
        self.conditional_fraction = float(params.pop("conditional_fraction", 0.5))
        spec = get_objective(params.pop("loss", "dpo"))
        if spec.inputs != "pair":
            raise ValueError(f"dove: loss {spec.name!r} takes unpaired inputs; choose a pair objective")
        self.objectives = [(spec, objective.weight, params)]
        self.needs_reference = spec.needs_reference
        if getattr(config, "max_tokens_per_batch", None):  # the token budget counts one shared prompt per pair
            raise ValueError("dove: max_tokens_per_batch is not supported (two prompts per pair); use batch_size")

    @property
    def score_prompt(self) -> bool:
        return True

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = self.config.data

        def from_synthetic(pairs: list) -> list[JointPair]:
            return make_joint_pairs(pairs, data.synthetic.seed, self.conditional_fraction)

        def read(source: str) -> list[JointPair]:
            return load_joint_pairs(source, column_map=data.column_map, on_invalid=data.on_invalid,
                                    rejected_rows_path=run_dir / "rejected_rows.jsonl", log=log)

        train, evaluation = read_splits(self.config, from_synthetic, read)
        encoder = PromptEncoder(tokenizer, data.use_chat_template)
        encoded = encode_splits((train, evaluation),
                                lambda p: encode_joint_pair(encoder, p, data.max_length, data.max_prompt_length),
                                data.max_length, log)
        n_joint = sum(item.joint for item in encoded[0])
        log(f"data: {len(train)} train ({n_joint} joint, {len(train) - n_joint} conditional) and "
            f"{len(evaluation)} eval joint pairs")
        return encoded[0], encoded[1]

    def reference_rows(self, items: list) -> Rows:
        """Two rows per pair, in index order: (prompt_chosen, chosen), (prompt_rejected, rejected)."""
        rows: Rows = []
        for item in items:
            rows += [(item.prompt_chosen, item.chosen), (item.prompt_rejected, item.rejected)]
        return rows

    def joint_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                    ) -> tuple[PairLogps, int]:
        batch_items = [items[i] for i in indices]
        rows = [(p.prompt_chosen, p.chosen) for p in batch_items] + \
               [(p.prompt_rejected, p.rejected) for p in batch_items]
        batch = collate(rows, ctx.pad_id, score_prompt=True).to(ctx.device)
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

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        logps, num_tokens = self.joint_logps(ctx, items, indices, precomputed)
        loss, metrics = combine_objectives(self.objectives, logps, state, training)
        metrics["joint_fraction"] = sum(items[i].joint for i in indices) / len(indices)
        return StepOutput(loss, metrics, num_tokens)

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        """Metrics over the whole eval set at once, plus the accuracy on joint and on conditional pairs."""
        was_training = ctx.model.training
        ctx.model.eval()
        with torch.no_grad():
            parts = [self.joint_logps(ctx, items, list(range(s, min(s + batch_size, len(items)))), precomputed)[0]
                     for s in range(0, len(items), batch_size)]
        ctx.model.train(was_training)
        logps = cat_pair_logps(parts)
        _, metrics = combine_objectives(self.objectives, logps, state, training=False)
        joint = torch.tensor([item.joint for item in items], device=logps.chosen.device)
        metrics["joint_fraction"] = joint.float().mean().item()
        # implicit-reward ranking when there is a reference, else the joint-likelihood ranking
        if logps.ref_chosen is not None:
            correct = (logps.chosen - logps.ref_chosen) > (logps.rejected - logps.ref_rejected)
        else:
            correct = logps.chosen > logps.rejected
        for name, mask in (("joint", joint), ("conditional", ~joint)):
            if mask.any():
                metrics[f"accuracy/{name}"] = correct[mask].float().mean().item()
        return metrics
