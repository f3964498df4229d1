"""DCKD: dual-constrained knowledge distillation of a DPO teacher into a small student.

Paper: Gao et al., "Advantage-Guided Distillation for Preference Alignment in Small Language Models", ICLR 2025,
arXiv 2502.17927. The loss is :func:`alignkit.objectives.distill.dckd_loss`::

    KL_w = mean over t ∈ y_w of KL(p_T(·|x, y_w,<t) ‖ p_θ(·|x, y_w,<t))     over the top-k + "other" buckets
    KL_l = the same on y_l
    L = w_sft·NLL(y_w) + w_distill·(w_c·KL_w + w_r·KL_l)

Data are preference pairs (prompt, chosen, rejected); the DPO teacher π_dpo^T's top-k on both responses comes
from :mod:`alignkit.train.methods.teacher_cache`, computed on first use if missing (then the teacher is loaded
next to the student once; ``python -m alignkit.train.methods.distill precompute -c <config>`` computes it
beforehand). Defaults: ``top_k`` 20, ``teacher_batch_size`` 8 and every weight 0: the paper's recipe values
were not seen and its trainer defaults them all to 0, so a run must switch terms on (``examples/dckd.yaml``
carries working values, not the paper's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, model_validator
from torch import Tensor

from alignkit.engine.logprobs import response_logits
from alignkit.objectives.distill import dckd_loss, topk_forward_kl
from alignkit.objectives.params import Params
from alignkit.train.config import TrainConfig
from alignkit.train.data import load_run_data
from alignkit.train.methods.base import BatchContext, Method, StepOutput, method_params, params_error, register_method
from alignkit.train.methods.online import float_metrics
from alignkit.train.methods.teacher_cache import Rows, TeacherTopK, cached_teacher_topk, check_vocab, default_cache_dir

TEACHER_SPEC = "a model directory, builtin name or hub id"


class DCKDParams(Params):
    teacher: str | None = Field(None, description=f"the DPO teacher π_dpo^T ({TEACHER_SPEC}, e.g. a DPO run's final/)")
    top_k: int = Field(20, ge=1, description="teacher log-probs kept per position (the rest is one 'other' bucket)")
    teacher_cache: str | None = Field(None, description="directory of cached tables (default <alignkit cache>/"
                                                        "teacher_topk)")
    teacher_batch_size: int = Field(8, ge=1, description="rows per teacher forward pass")
    sft_weight: float = Field(0.0, ge=0, description="w_sft: NLL of the chosen response")
    distill_weight: float = Field(0.0, ge=0, description="w_distill: weight of the two KL terms together")
    chosen_weight: float = Field(0.0, ge=0, description="w_c: KL to the teacher on the chosen response")
    rejected_weight: float = Field(0.0, ge=0, description="w_r: KL to the teacher on the rejected response")

    @model_validator(mode="after")
    def _switched_on(self) -> DCKDParams:
        if self.sft_weight == 0 and self.distill_weight * (self.chosen_weight + self.rejected_weight) == 0:
            raise params_error("sft_weight", "every loss term has weight 0 (the reference trainer's defaults; the "
                                             "paper's recipe values are unknown): set sft_weight and/or "
                                             "distill_weight with chosen_weight / rejected_weight, e.g. as in "
                                             "examples/dckd.yaml", self.sft_weight)
        if not self.teacher:
            raise params_error("teacher", f"set teacher ({TEACHER_SPEC})", self.teacher)
        return self


def require_pairs(config: TrainConfig) -> None:
    if config.data.kind != "pair":
        raise ValueError(f"objective {config.objectives[0].name!r} reads preference pairs (data.kind: pair)")


@dataclass
class DistillPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    table: TeacherTopK  # rows 2·row (chosen) and 2·row + 1 (rejected)
    row: int


@register_method("dckd", params=DCKDParams)
class DCKDMethod(Method):
    """Parameters: :class:`DCKDParams` (``teacher`` and at least one weight must be set). Data: preference
    pairs. No reference model: the teacher's tables stand in for it."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, DCKDParams)
        self.weights = {key: getattr(self.params, key) for key in
                        ("sft_weight", "distill_weight", "chosen_weight", "rejected_weight")}
        require_pairs(config)

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = load_run_data(self.config, tokenizer, run_dir, unpaired=False, log=log)
        splits = (data.train_encoded, data.eval_encoded)
        row_sets = [[row for e in encoded for row in ((e.prompt, e.chosen), (e.prompt, e.rejected))]
                    for encoded in splits]
        p = self.params
        assert p.teacher is not None
        tables = cached_teacher_topk(p.teacher, row_sets, p.top_k, tokenizer, default_cache_dir(p.teacher_cache),
                                     p.teacher_batch_size, self.config.model.device, log)
        train_items, eval_items = (
            [DistillPair(e.prompt, e.chosen, e.rejected, table, i) for i, e in enumerate(encoded)]
            for encoded, table in zip(splits, tables, strict=True))
        return train_items, eval_items

    def reference_rows(self, items: list) -> Rows:
        return []

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        batch: list[DistillPair] = [items[i] for i in indices]
        n = len(batch)
        rows = [(b.prompt, b.chosen) for b in batch] + [(b.prompt, b.rejected) for b in batch]
        out = response_logits(ctx.model, rows, ctx.pad_id, ctx.autocast_dtype, ctx.device)
        width = out.logits.shape[1]
        t_idx_c, t_lp_c = _gather_tables(batch, 0, width, ctx.device)
        t_idx_r, t_lp_r = _gather_tables(batch, 1, width, ctx.device)
        check_vocab(t_idx_c, out.logits.shape[-1])
        with_rejected = self.weights["rejected_weight"] != 0 and self.weights["distill_weight"] != 0
        result = dckd_loss(
            out.logits[:n], out.labels[:n], out.mask[:n], t_idx_c, t_lp_c,
            out.logits[n:] if with_rejected else None, out.mask[n:] if with_rejected else None,
            t_idx_r if with_rejected else None, t_lp_r if with_rejected else None, **self.weights)
        loss = result.loss.mean()
        metrics = float_metrics(result.metrics)
        with torch.no_grad():
            token_lp = out.logits.log_softmax(-1).gather(-1, out.labels[..., None]).squeeze(-1)
            mean_lp = torch.where(out.mask, token_lp, 0.0).sum(1) / out.mask.sum(1).clamp(min=1)
            metrics["ranking/accuracy_normalized"] = (mean_lp[:n] > mean_lp[n:]).float().mean().item()
            metrics["logps/rejected"] = torch.where(out.mask[n:], token_lp[n:], 0.0).sum(1).mean().item()
            if not with_rejected:
                rejected_kl = topk_forward_kl(out.logits[n:], t_idx_r, t_lp_r, out.mask[n:])
                metrics["loss/rejected-fkl"] = rejected_kl.mean().item()
        metrics["loss"] = loss.item()
        return StepOutput(loss, metrics, out.num_tokens)


def _gather_tables(batch: list[DistillPair], side: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    idx, lp = zip(*(b.table.gather([2 * b.row + side], width, device) for b in batch), strict=True)
    return torch.cat(idx), torch.cat(lp)


__all__ = ["DCKDMethod", "DCKDParams", "DistillPair", "require_pairs"]
