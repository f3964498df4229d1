"""ADPA: advantage-guided distillation of a DPO teacher into a small student, on the student's own samples.

Paper: Gao et al., "Advantage-Guided Distillation for Preference Alignment in Small Language Models", ICLR 2025,
arXiv 2502.17927. The loss is :func:`alignkit.objectives.distill.adpa_loss`, on one response y^S per prompt
sampled from the student's starting point (the policy before its first update)::

    A(s_t, v) = log π_dpo^T(v|s_t) − log π_ref^T(v|s_t)              v on the teachers' top-k support
    L_ADPA = −mean over t ∈ y^S of Σ_v π_θ(v|s_t)·A(s_t, v)
    (importance_sampling: L_ADPA · exp(log π_θ(y^S|x) − log π_ref^S(y^S|x)))
    L = w_sft·NLL(y_w) + w_adpa·L_ADPA + w_kl·(log π_ref^S(y^S|x) − log π_θ(y^S|x))

π_dpo^T is the DPO teacher, π_ref^T its SFT reference (the teacher's reference, not the student's), π_ref^S the
loop's reference (the starting student). Samples and both teachers' top-k tables
(:mod:`alignkit.train.methods.teacher_cache`) are written to ``<output_dir>/adpa/{train,eval}.safetensors``
before the first update (or by ``python -m alignkit.train.methods.distill precompute -c <config>``, which loads
student and teachers one at a time), and a resumed run reuses them. Defaults: ``top_k`` 20,
``teacher_batch_size`` 8, ``max_new_tokens`` 48, ``temperature`` 1.0, ``importance_sampling`` false and every
weight 0: the paper's recipe values were not seen and its trainer defaults them all to 0, so a run must switch
terms on (``examples/adpa.yaml`` carries working values, not the paper's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import response_logits
from alignkit.objectives.distill import adpa_loss, merge_teacher_topk
from alignkit.train.config import TrainConfig
from alignkit.train.data import load_run_data
from alignkit.train.methods.base import BatchContext, Method, StepOutput, method_params, params_error, register_method
from alignkit.train.methods.dckd import TEACHER_SPEC, require_pairs
from alignkit.train.methods.online import SampledParams, float_metrics, sample_responses, unwrap_model
from alignkit.train.methods.teacher_cache import (
    TOPK_FORMAT,
    Rows,
    TeacherTopK,
    check_vocab,
    free_memory,
    load_tables,
    load_teacher,
    save_tables,
    teacher_signature,
    teacher_topk,
)
from alignkit.train.reference import rows_fingerprint


class ADPAParams(SampledParams):
    teacher: str | None = Field(None, description=f"the DPO teacher π_dpo^T ({TEACHER_SPEC})")
    ref_teacher: str | None = Field(None, description="the DPO teacher's SFT reference π_ref^T (not the student's)")
    top_k: int = Field(20, ge=1, description="teacher log-probs kept per position (the rest is one 'other' bucket)")
    teacher_batch_size: int = Field(8, ge=1, description="rows per teacher forward pass and prompts per sampling "
                                                         "batch")
    adpa_weight: float = Field(0.0, ge=0, description="w_adpa: the advantage-guided term")
    sft_weight: float = Field(0.0, ge=0, description="w_sft: NLL of the chosen response")
    importance_sampling: bool = Field(False, description="weight L_ADPA by π_θ(y^S)/π_ref^S(y^S) (needs a reference)")
    kl_penalty_weight: float = Field(0.0, ge=0, description="w_kl: log π_ref^S(y^S) − log π_θ(y^S) (needs a "
                                                            "reference)")

    @model_validator(mode="after")
    def _switched_on(self) -> ADPAParams:
        if self.adpa_weight == 0 and self.sft_weight == 0 and self.kl_penalty_weight == 0:
            raise params_error("adpa_weight", "every loss term has weight 0 (the reference trainer's defaults; the "
                                              "paper's recipe values are unknown): set adpa_weight (and "
                                              "sft_weight), e.g. as in examples/adpa.yaml", self.adpa_weight)
        for key in ("teacher", "ref_teacher"):
            if not getattr(self, key):
                raise params_error(key, f"set {key} ({TEACHER_SPEC})", getattr(self, key))
        return self


@dataclass
class ADPAItem:
    prompt: list[int]
    chosen: list[int]
    split: str  # "train" | "eval": which prepared table holds this item's sample
    row: int


@dataclass
class ADPAData:
    """One split's student samples y^S with both teachers' top-k on them (rows in item order)."""

    samples: list[list[int]]
    dpo: TeacherTopK
    ref: TeacherTopK


@register_method("adpa", params=ADPAParams)
class ADPAMethod(Method):
    """Parameters: :class:`ADPAParams` (both teachers and at least one weight must be set). Data: preference
    pairs (prompt and chosen used; the rejected response is replaced by the student's own sample). A reference
    (the starting student) is needed only for importance sampling and the KL penalty."""

    precomputable_reference = False  # the reference scores samples drawn after the data is loaded

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, ADPAParams)
        require_pairs(config)
        self.needs_reference = self.params.importance_sampling or self.params.kl_penalty_weight != 0
        self.splits: dict[str, list[ADPAItem]] = {}
        self.data: dict[str, ADPAData] = {}
        self.tokenizer = None
        self.run_dir: Path | None = None
        self.log: Callable[[str], None] = print

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = load_run_data(self.config, tokenizer, run_dir, unpaired=False, log=log)
        for split, encoded in (("train", data.train_encoded), ("eval", data.eval_encoded)):
            self.splits[split] = [ADPAItem(e.prompt, e.chosen, split, i) for i, e in enumerate(encoded)]
        self.tokenizer, self.run_dir, self.log = tokenizer, run_dir, log
        return self.splits["train"], self.splits["eval"]

    def reference_rows(self, items: list) -> Rows:
        return []

    # -- preparation: samples from the starting student, then each teacher in turn

    def data_path(self, split: str) -> Path:
        assert self.run_dir is not None
        return Path(self.run_dir) / "adpa" / f"{split}.safetensors"

    def signature(self, split: str) -> str:
        o = self.params
        settings = {"top_k": o.top_k, "max_new_tokens": o.max_new_tokens, "temperature": o.temperature,
                    "teacher": teacher_signature(str(o.teacher)), "ref_teacher": teacher_signature(str(o.ref_teacher)),
                    "seed": self.config.seed, "split": split, "format": TOPK_FORMAT}
        return rows_fingerprint([(it.prompt, []) for it in self.splits[split]], settings)

    def prepare(self, device: torch.device, state: dict | None = None, student: nn.Module | None = None,
                load_student: Callable[[], nn.Module] | None = None) -> None:
        """Load or build both splits' samples and teacher tables. ``student`` must be the starting point
        (or ``load_student`` loads it, and it is dropped again before any teacher loads)."""
        if self.data:
            return
        missing = [s for s in self.splits if not self._read(s)]
        if missing and state is not None and state.get("adpa", {}).get("prepared"):
            raise RuntimeError(f"resumed ADPA run but {self.data_path(missing[0])} is missing or stale; the "
                               f"student samples of the original run cannot be redrawn from a trained policy")
        if missing:
            own = student is None
            if own:
                if load_student is None:
                    raise ValueError("adpa: prepare needs the student or a way to load it")
                student = load_student()
            samples = {split: self._sample(student, split, device) for split in missing}
            if own:
                student = None
                free_memory()
            tables: dict[str, dict[str, TeacherTopK]] = {split: {} for split in missing}
            for key in ("teacher", "ref_teacher"):  # one teacher in memory at a time
                teacher = load_teacher(str(getattr(self.params, key)), self.tokenizer, device, self.log)
                for split in missing:
                    rows = [(it.prompt, s) for it, s in zip(self.splits[split], samples[split], strict=True)]
                    tables[split][key] = teacher_topk(teacher, rows, self.params.top_k, self.tokenizer.pad_token_id,
                                                      self.params.teacher_batch_size, log=self.log)
                teacher = None
                free_memory()
            for split in missing:
                self._write(split, samples[split], tables[split]["teacher"], tables[split]["ref_teacher"])
                self._read(split)
        if state is not None:
            state.setdefault("adpa", {})["prepared"] = True

    def _sample(self, student: nn.Module, split: str, device: torch.device) -> list[list[int]]:
        items = self.splits[split]
        generator = torch.Generator(device=device).manual_seed(self.config.seed * 1_000_003 + (split == "eval"))
        batch_size = self.params.teacher_batch_size
        out: list[list[int]] = []
        start_time = time.perf_counter()
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            groups = sample_responses(unwrap_model(student), None, [it.prompt for it in part], 1, 0.0,
                                      self.params.max_new_tokens, self.params.temperature, generator,
                                      self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, device)
            out += [g[0] if g[0] else [self.tokenizer.eos_token_id] for g in groups]
        self.log(f"adpa: sampled {len(out)} {split} responses from the student in "
                 f"{time.perf_counter() - start_time:.1f} s")
        return out

    def _write(self, split: str, samples: list[list[int]], dpo: TeacherTopK, ref: TeacherTopK) -> None:
        flat = torch.tensor([t for s in samples for t in s], dtype=torch.long)
        lengths = torch.tensor([len(s) for s in samples], dtype=torch.long)
        tensors = {"samples": flat, "sample_lengths": lengths, **dpo.tensors("dpo_"), **ref.tensors("ref_")}
        save_tables(self.data_path(split), tensors, {"format": str(TOPK_FORMAT), "signature": self.signature(split)})

    def _read(self, split: str) -> bool:
        path = self.data_path(split)
        if not path.is_file():
            return False
        tensors, metadata = load_tables(path)
        if metadata.get("signature") != self.signature(split):
            self.log(f"adpa: {path} was prepared for other data or settings; preparing again")
            return False
        flat, lengths = tensors["samples"].tolist(), tensors["sample_lengths"].tolist()
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        samples = [flat[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]
        self.data[split] = ADPAData(samples, TeacherTopK.from_tensors(tensors, "dpo_"),
                                    TeacherTopK.from_tensors(tensors, "ref_"))
        self.log(f"adpa: {split} samples and teacher top-k from {path}")
        return True

    # -- the loss

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        if not self.data:
            self.prepare(ctx.device, state, student=ctx.model)
        batch: list[ADPAItem] = [items[i] for i in indices]
        n = len(batch)
        data = self.data[batch[0].split]
        samples = [data.samples[b.row] for b in batch]
        o = self.params
        with_chosen = o.sft_weight != 0
        rows = [(b.prompt, s) for b, s in zip(batch, samples, strict=True)]
        if with_chosen:
            rows += [(b.prompt, b.chosen) for b in batch]
        out = response_logits(ctx.model, rows, ctx.pad_id, ctx.autocast_dtype, ctx.device)
        sample_width = max(len(s) for s in samples)
        logits = out.logits[:n, :sample_width]
        labels, mask = out.labels[:n, :sample_width], out.mask[:n, :sample_width]
        dpo_idx, dpo_lp = _gather_rows(data.dpo, batch, sample_width, ctx.device)
        ref_idx, ref_lp = _gather_rows(data.ref, batch, sample_width, ctx.device)
        check_vocab(dpo_idx, logits.shape[-1])
        check_vocab(ref_idx, logits.shape[-1])
        support, dpo_on, ref_on, support_mask = merge_teacher_topk(dpo_idx, dpo_lp, ref_idx, ref_lp)
        ref_student = None
        if self.needs_reference:
            if ctx.reference is None:
                raise ValueError("adpa: importance sampling and the KL penalty need a reference (the starting "
                                 "student): reference copy or adapter")
            ref_student = ctx.reference.logps(collate(rows[:n], ctx.pad_id).to(ctx.device)).logps
        result = adpa_loss(
            logits, labels, mask, support, dpo_on, ref_on, support_mask=support_mask,
            adpa_weight=o.adpa_weight, sft_weight=o.sft_weight,
            chosen_logits=out.logits[n:] if with_chosen else None,
            chosen_labels=out.labels[n:] if with_chosen else None,
            chosen_mask=out.mask[n:] if with_chosen else None,
            importance_sampling=o.importance_sampling, ref_student_sampled_logps=ref_student,
            kl_penalty_weight=o.kl_penalty_weight)
        loss = result.loss.mean()
        metrics = float_metrics(result.metrics)
        with torch.no_grad():
            # The teacher advantage of the tokens actually sampled: how good y^S looks to the DPO teacher.
            on_sample = (support == labels[..., None]) & support_mask
            advantage = torch.where(on_sample & torch.isfinite(dpo_on - ref_on), dpo_on - ref_on, 0.0).sum(-1)
            metrics["advantage/sampled_tokens"] = (torch.where(mask, advantage, 0.0).sum() /
                                                   mask.sum().clamp(min=1)).item()
            metrics["response_length"] = mask.sum(1).float().mean().item()
        metrics["loss"] = loss.item()
        return StepOutput(loss, metrics, out.num_tokens)

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        if not self.data:
            self.prepare(ctx.device, state, student=ctx.model)
        return super().evaluate(ctx, items, batch_size, precomputed, state)


def _gather_rows(table: TeacherTopK, batch: list[ADPAItem], width: int, device: torch.device
                 ) -> tuple[Tensor, Tensor]:
    return table.gather([b.row for b in batch], width, device)


__all__ = ["ADPAData", "ADPAItem", "ADPAMethod", "ADPAParams"]
