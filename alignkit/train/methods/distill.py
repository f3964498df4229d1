"""DCKD and ADPA training (METHODS.md §10): preference distillation from precomputed teacher top-k.

Teachers never sit in memory during training. Their token distributions over the response tokens of every
training row are computed once, compressed to the top-k log-probs per position (the rest of the vocabulary
is one "other" bucket), and cached in safetensors; the loss functions are
:func:`alignkit.objectives.distill.dckd_loss` and :func:`~alignkit.objectives.distill.adpa_loss`.

* **DCKD** (``dckd``): preference pairs (prompt, chosen, rejected) and the DPO teacher π_dpo^T's top-k on
  both responses. Loss w_sft·NLL(y_w) + w_distill·(w_c·KL_w + w_r·KL_l). The teacher table is keyed by
  the teacher (its path, file sizes and times) and the exact token ids, cached under
  ``<cache>/teacher_topk/``, and computed on first use if missing (then the teacher is loaded next to the
  student once; run ``python -m alignkit.train.methods.distill precompute -c <config>`` beforehand to avoid
  that).
* **ADPA** (``adpa``): the dataset's prompts and chosen responses, plus one response y^S per prompt
  sampled from the student's starting point (the policy before its first update), with the top-k of both
  the DPO teacher and its SFT reference teacher π_ref^T on y^S. Loss w_sft·NLL(y_w) + w_adpa·L_ADPA
  (optionally importance-weighted) + w_kl·(log π_ref^S(y^S) − log π_θ(y^S)), π_ref^S being the loop's
  reference. Samples and tables are written to ``<output_dir>/adpa/{train,eval}.safetensors`` before the
  first update (or by the precompute command, which loads student and teachers one at a time), and a
  resumed run reuses them.

Every weight defaults to 0 and the pure functions refuse to run with nothing switched on: the paper's
recipe values were not seen (METHODS.md §10, weights LOW). The example configs carry working values, not
the paper's.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import response_logits
from alignkit.objectives.distill import adpa_loss, dckd_loss, merge_teacher_topk
from alignkit.train.config import TrainConfig
from alignkit.train.data import load_run_data
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, register_method
from alignkit.train.methods.online import Options, float_metrics, sample_responses, unwrap_model
from alignkit.train.reference import rows_fingerprint

TOPK_FORMAT = 1

# ------------------------------------------------------------------------------------------ logits


# ------------------------------------------------------------------------------------------ teacher top-k


@dataclass
class TeacherTopK:
    """Top-k teacher log-probs for the response tokens of R rows, stored flat ([M, K], M = Σ lengths)."""

    idx: Tensor  # [M, K] int32
    logprobs: Tensor  # [M, K] float32
    lengths: Tensor  # [R] int64

    def __post_init__(self) -> None:
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.long().cumsum(0)])

    @property
    def k(self) -> int:
        return self.idx.shape[1]

    def gather(self, rows: Sequence[int], width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Padded [B, width, K] (indices, log-probs) for ``rows``; padding has index 0 and log-prob −inf
        (p = 0, which the loss functions ignore)."""
        idx = torch.zeros(len(rows), width, self.k, dtype=torch.long)
        logprobs = torch.full((len(rows), width, self.k), -torch.inf)
        for i, row in enumerate(rows):
            start, end = int(self.offsets[row]), int(self.offsets[row + 1])
            n = min(end - start, width)
            idx[i, :n] = self.idx[start:start + n].long()
            logprobs[i, :n] = self.logprobs[start:start + n].float()
        return idx.to(device), logprobs.to(device)

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        return {f"{prefix}idx": self.idx.contiguous(), f"{prefix}logprobs": self.logprobs.contiguous(),
                f"{prefix}lengths": self.lengths.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "") -> TeacherTopK:
        return cls(tensors[f"{prefix}idx"], tensors[f"{prefix}logprobs"], tensors[f"{prefix}lengths"])


@torch.no_grad()
def teacher_topk(teacher: nn.Module, rows: Rows, k: int, pad_id: int, batch_size: int = 8,
                 autocast_dtype: torch.dtype | None = None, log: Callable[[str], None] | None = None
                 ) -> TeacherTopK:
    """The teacher's top-k log-probs (full-vocabulary softmax) at every response token of ``rows``."""
    was_training = teacher.training
    teacher.eval()
    idx_parts, lp_parts = [], []
    start_time = time.perf_counter()
    try:
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            out = response_logits(teacher, part, pad_id, autocast_dtype)
            top = out.logits.log_softmax(-1).topk(k, dim=-1)
            idx_parts.append(top.indices[out.mask].to(torch.int32).cpu())
            lp_parts.append(top.values[out.mask].float().cpu())
            if log and (start // batch_size) % 50 == 49:
                log(f"teacher top-{k}: {start + len(part)}/{len(rows)} rows")
    finally:
        teacher.train(was_training)
    if log:
        log(f"teacher top-{k}: {len(rows)} rows in {time.perf_counter() - start_time:.1f} s")
    lengths = torch.tensor([len(r) for _, r in rows], dtype=torch.long)
    empty = torch.zeros(0, k)
    return TeacherTopK(torch.cat(idx_parts) if idx_parts else empty.int(),
                       torch.cat(lp_parts) if lp_parts else empty, lengths)


def _save(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: an interrupted write never leaves a truncated table behind
    return path


def _load(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def precompute_teacher_topk(teacher: nn.Module, rows: Rows, k: int, out_path: str | Path, pad_id: int,
                            batch_size: int = 8, autocast_dtype: torch.dtype | None = None,
                            log: Callable[[str], None] | None = print) -> Path:
    """Compute the teacher's top-k over the response tokens of ``rows`` ((prompt ids, response ids), token
    ids of the *student's* tokenizer, which the teacher must share) and write them to ``out_path``
    (safetensors: ``idx`` [M, K] int32, ``logprobs`` [M, K] float32, ``lengths`` [R]; metadata ``rows`` is
    the rows' fingerprint, checked by :func:`load_teacher_topk`)."""
    table = teacher_topk(teacher, rows, k, pad_id, batch_size, autocast_dtype, log)
    metadata = {"format": str(TOPK_FORMAT), "k": str(k), "rows": rows_fingerprint(rows, {"k": k})}
    return _save(Path(out_path), table.tensors(), metadata)


def load_teacher_topk(path: str | Path, rows: Rows | None = None) -> TeacherTopK:
    """A table written by :func:`precompute_teacher_topk`; with ``rows``, refuse one computed for other rows."""
    tensors, metadata = _load(Path(path))
    if rows is not None and metadata.get("rows") != rows_fingerprint(rows, {"k": int(metadata.get("k", 0))}):
        raise ValueError(f"{path}: teacher top-k was computed for different data (tokens, template or "
                         f"truncation changed); delete it to recompute")
    return TeacherTopK.from_tensors(tensors)


def teacher_signature(spec: str) -> str:
    """Identifies a teacher without loading it: the spec, plus names, sizes and mtimes of a local model's
    files (so retraining a DPO teacher into the same directory invalidates its cached top-k)."""
    path = Path(spec).expanduser()
    parts = [spec]
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts += [f"{p.relative_to(path) if p != path else p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                  for p in files]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _load_teacher(spec: str, tokenizer, device: torch.device | str | None, log: Callable[[str], None]
                  ) -> nn.Module:
    from alignkit.models import load_model

    teacher, teacher_tokenizer = load_model(spec, device=str(device) if device is not None else "auto", log=log)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"teacher {spec!r} has a different vocabulary from the student; DCKD/ADPA need a "
                         f"shared tokenizer")
    return teacher.eval().requires_grad_(False)


def _collect() -> None:
    """Return a dropped model's memory before the next one loads (callers drop their references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cached_teacher_topk(spec: str, row_sets: list[Rows], k: int, tokenizer, cache_dir: Path, batch_size: int,
                        device: torch.device | str | None, log: Callable[[str], None],
                        teacher: nn.Module | None = None) -> list[TeacherTopK]:
    """The teacher's tables for each of ``row_sets`` (e.g. train and eval) from ``cache_dir``; missing ones are
    computed with a single load of the teacher (or the ``teacher`` given)."""
    paths = []
    for rows in row_sets:
        key = hashlib.sha256(f"{teacher_signature(spec)}|{rows_fingerprint(rows, {'k': k})}|{TOPK_FORMAT}"
                             .encode()).hexdigest()[:32]
        paths.append(cache_dir / f"{key}.safetensors")
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        own = teacher is None
        if own:
            log(f"teacher top-{k} of {spec}: not cached, loading the teacher (precompute beforehand to keep it "
                f"out of memory during training: python -m alignkit.train.methods.distill precompute -c <config>)")
            teacher = _load_teacher(spec, tokenizer, device, log)
        for i in missing:
            precompute_teacher_topk(teacher, row_sets[i], k, paths[i], tokenizer.pad_token_id, batch_size, log=log)
            log(f"teacher top-{k} of {spec}: cached at {paths[i]}")
        if own:
            teacher = None
            _collect()
    for i, path in enumerate(paths):
        if i not in missing:
            log(f"teacher top-{k} of {spec}: reused {path}")
    return [load_teacher_topk(path, rows) for path, rows in zip(paths, row_sets, strict=True)]


def default_cache_dir(value: Any) -> Path:
    if value:
        return Path(value).expanduser()
    from alignkit.models.builtin import cache_root

    return cache_root() / "teacher_topk"


# ------------------------------------------------------------------------------------------ DCKD


@dataclass
class DistillPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    table: TeacherTopK  # rows 2·row (chosen) and 2·row + 1 (rejected)
    row: int


DCKD_DEFAULTS: dict[str, Any] = {
    "teacher": None,  # the DPO teacher: builtin name, directory (e.g. a DPO run's final/) or hub id
    "top_k": 20,
    "teacher_cache": None,  # directory of cached tables; default <alignkit cache>/teacher_topk
    "teacher_batch_size": 8,
    "sft_weight": 0.0,
    "distill_weight": 0.0,
    "chosen_weight": 0.0,
    "rejected_weight": 0.0,
}


def _require_pairs(config: TrainConfig) -> None:
    if config.data.kind != "pair":
        raise ValueError(f"objective {config.objectives[0].name!r} reads preference pairs (data.kind: pair)")


def _require_teacher(options: Options, key: str = "teacher") -> str:
    spec = options[key]
    if not spec:
        raise ValueError(f"{options.name}: set {key} (a model directory, builtin name or hub id)")
    return str(spec)


@register_method("dckd")
class DCKDMethod(Method):
    """Config keys (``objectives[0]``): ``teacher`` (the DPO teacher), ``top_k`` (20), ``teacher_cache``,
    ``teacher_batch_size`` (8), ``sft_weight``, ``distill_weight``, ``chosen_weight``, ``rejected_weight``
    (all 0 by default; set them). Data: preference pairs."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.options = Options(config, DCKD_DEFAULTS)
        self.weights = {key: float(self.options[key]) for key in
                        ("sft_weight", "distill_weight", "chosen_weight", "rejected_weight")}
        w = self.weights
        if w["sft_weight"] == 0 and w["distill_weight"] * (w["chosen_weight"] + w["rejected_weight"]) == 0:
            raise ValueError("dckd: every loss term has weight 0 (the reference trainer's defaults; the paper's "
                             "recipe values are unknown). Set sft_weight and/or distill_weight with "
                             "chosen_weight / rejected_weight, e.g. as in examples/dckd.yaml")
        _require_teacher(self.options)
        _require_pairs(config)

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = load_run_data(self.config, tokenizer, run_dir, unpaired=False, log=log)
        splits = (data.train_encoded, data.eval_encoded)
        row_sets = [[row for e in encoded for row in ((e.prompt, e.chosen), (e.prompt, e.rejected))]
                    for encoded in splits]
        tables = cached_teacher_topk(_require_teacher(self.options), row_sets, int(self.options["top_k"]), tokenizer,
                                     default_cache_dir(self.options["teacher_cache"]),
                                     int(self.options["teacher_batch_size"]), self.config.model.device, log)
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
        _check_vocab(t_idx_c, out.logits.shape[-1])
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
                rejected_kl = _topk_kl(out.logits[n:], t_idx_r, t_lp_r, out.mask[n:])
                metrics["loss/rejected-fkl"] = rejected_kl.mean().item()
        metrics["loss"] = loss.item()
        return StepOutput(loss, metrics, out.num_tokens)


def _topk_kl(logits: Tensor, idx: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    from alignkit.objectives.distill import topk_forward_kl

    return topk_forward_kl(logits, idx, logprobs, mask)


def _gather_tables(batch: list[DistillPair], side: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    idx, lp = zip(*(b.table.gather([2 * b.row + side], width, device) for b in batch), strict=True)
    return torch.cat(idx), torch.cat(lp)


def _check_vocab(idx: Tensor, vocab: int) -> None:
    if idx.numel() and int(idx.max()) >= vocab:
        raise ValueError(f"teacher token index {int(idx.max())} is outside the student's vocabulary ({vocab}); "
                         f"teacher and student must share a tokenizer")


# ------------------------------------------------------------------------------------------ ADPA


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


ADPA_DEFAULTS: dict[str, Any] = {
    "teacher": None,  # the DPO teacher π_dpo^T
    "ref_teacher": None,  # its SFT reference π_ref^T (the teacher's, not the student's)
    "top_k": 20,
    "teacher_batch_size": 8,
    "max_new_tokens": 48,
    "temperature": 1.0,
    "adpa_weight": 0.0,
    "sft_weight": 0.0,
    "importance_sampling": False,
    "kl_penalty_weight": 0.0,
}


@register_method("adpa")
class ADPAMethod(Method):
    """Config keys (``objectives[0]``): ``teacher`` (DPO teacher), ``ref_teacher`` (its SFT reference),
    ``top_k`` (20), ``teacher_batch_size`` (8), ``max_new_tokens`` (48) and ``temperature`` (1.0) of the
    student samples, ``adpa_weight``, ``sft_weight``, ``kl_penalty_weight`` (all 0 by default; set them),
    ``importance_sampling`` (false). Data: preference pairs (prompt and chosen used; the rejected response is
    replaced by the student's own sample). A reference (the starting student) is needed only for importance
    sampling and the KL penalty."""

    precomputable_reference = False  # the reference scores samples drawn after the data is loaded

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.options = Options(config, ADPA_DEFAULTS)
        o = self.options
        if float(o["adpa_weight"]) == 0 and float(o["sft_weight"]) == 0 and float(o["kl_penalty_weight"]) == 0:
            raise ValueError("adpa: every loss term has weight 0 (the reference trainer's defaults; the paper's "
                             "recipe values are unknown). Set adpa_weight (and sft_weight), e.g. as in "
                             "examples/adpa.yaml")
        _require_teacher(o)
        _require_teacher(o, "ref_teacher")
        _require_pairs(config)
        self.needs_reference = bool(o["importance_sampling"]) or float(o["kl_penalty_weight"]) != 0
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
        o = self.options
        settings = {key: o[key] for key in ("top_k", "max_new_tokens", "temperature")}
        settings |= {"teacher": teacher_signature(str(o["teacher"])),
                     "ref_teacher": teacher_signature(str(o["ref_teacher"])), "seed": self.config.seed,
                     "split": split, "format": TOPK_FORMAT}
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
                _collect()
            tables: dict[str, dict[str, TeacherTopK]] = {split: {} for split in missing}
            for key in ("teacher", "ref_teacher"):  # one teacher in memory at a time
                teacher = _load_teacher(str(self.options[key]), self.tokenizer, device, self.log)
                for split in missing:
                    rows = [(it.prompt, s) for it, s in zip(self.splits[split], samples[split], strict=True)]
                    tables[split][key] = teacher_topk(teacher, rows, int(self.options["top_k"]),
                                                      self.tokenizer.pad_token_id,
                                                      int(self.options["teacher_batch_size"]), log=self.log)
                teacher = None
                _collect()
            for split in missing:
                self._write(split, samples[split], tables[split]["teacher"], tables[split]["ref_teacher"])
                self._read(split)
        if state is not None:
            state.setdefault("adpa", {})["prepared"] = True

    def _sample(self, student: nn.Module, split: str, device: torch.device) -> list[list[int]]:
        items = self.splits[split]
        generator = torch.Generator(device=device).manual_seed(self.config.seed * 1_000_003 + (split == "eval"))
        batch_size = int(self.options["teacher_batch_size"])
        out: list[list[int]] = []
        start_time = time.perf_counter()
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            groups = sample_responses(unwrap_model(student), None, [it.prompt for it in part], 1, 0.0,
                                      int(self.options["max_new_tokens"]), float(self.options["temperature"]),
                                      generator, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, device)
            out += [g[0] if g[0] else [self.tokenizer.eos_token_id] for g in groups]
        self.log(f"adpa: sampled {len(out)} {split} responses from the student in "
                 f"{time.perf_counter() - start_time:.1f} s")
        return out

    def _write(self, split: str, samples: list[list[int]], dpo: TeacherTopK, ref: TeacherTopK) -> None:
        flat = torch.tensor([t for s in samples for t in s], dtype=torch.long)
        lengths = torch.tensor([len(s) for s in samples], dtype=torch.long)
        tensors = {"samples": flat, "sample_lengths": lengths, **dpo.tensors("dpo_"), **ref.tensors("ref_")}
        _save(self.data_path(split), tensors, {"format": str(TOPK_FORMAT), "signature": self.signature(split)})

    def _read(self, split: str) -> bool:
        path = self.data_path(split)
        if not path.is_file():
            return False
        tensors, metadata = _load(path)
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
        o = self.options
        with_chosen = float(o["sft_weight"]) != 0
        rows = [(b.prompt, s) for b, s in zip(batch, samples, strict=True)]
        if with_chosen:
            rows += [(b.prompt, b.chosen) for b in batch]
        out = response_logits(ctx.model, rows, ctx.pad_id, ctx.autocast_dtype, ctx.device)
        sample_width = max(len(s) for s in samples)
        logits = out.logits[:n, :sample_width]
        labels, mask = out.labels[:n, :sample_width], out.mask[:n, :sample_width]
        dpo_idx, dpo_lp = _gather_rows(data.dpo, batch, sample_width, ctx.device)
        ref_idx, ref_lp = _gather_rows(data.ref, batch, sample_width, ctx.device)
        _check_vocab(dpo_idx, logits.shape[-1])
        _check_vocab(ref_idx, logits.shape[-1])
        support, dpo_on, ref_on, support_mask = merge_teacher_topk(dpo_idx, dpo_lp, ref_idx, ref_lp)
        ref_student = None
        if self.needs_reference:
            if ctx.reference is None:
                raise ValueError("adpa: importance sampling and the KL penalty need a reference (the starting "
                                 "student): reference copy or adapter")
            ref_student = ctx.reference.logps(collate(rows[:n], ctx.pad_id).to(ctx.device)).logps
        result = adpa_loss(
            logits, labels, mask, support, dpo_on, ref_on, support_mask=support_mask,
            adpa_weight=float(o["adpa_weight"]), sft_weight=float(o["sft_weight"]),
            chosen_logits=out.logits[n:] if with_chosen else None,
            chosen_labels=out.labels[n:] if with_chosen else None,
            chosen_mask=out.mask[n:] if with_chosen else None,
            importance_sampling=bool(o["importance_sampling"]), ref_student_sampled_logps=ref_student,
            kl_penalty_weight=float(o["kl_penalty_weight"]))
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


# ------------------------------------------------------------------------------------------ CLI


def precompute(config: TrainConfig, log: Callable[[str], None] = print) -> None:
    """Everything a DCKD or ADPA run would compute before its first update, with one model in memory at a
    time: DCKD's teacher tables (no student needed), or ADPA's student samples and both teachers' tables."""
    from alignkit.models import load_model, load_tokenizer
    from alignkit.train.methods import build_method

    method = build_method(config)
    if not isinstance(method, DCKDMethod | ADPAMethod):
        raise ValueError(f"precompute is for dckd and adpa runs, not {[o.name for o in config.objectives]}")
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.model.name, trust_remote_code=config.model.trust_remote_code, log=log)
    method.load(tokenizer, out_dir, log)  # DCKD: computes the teacher tables here
    if isinstance(method, ADPAMethod):
        from alignkit.models import resolve_device

        def load_student() -> nn.Module:
            return load_model(config.model.name, dtype=config.model.dtype, device=config.model.device,
                              trust_remote_code=config.model.trust_remote_code, log=log)[0]

        method.prepare(resolve_device(config.model.device), load_student=load_student)
        log(f"adpa: data ready in {out_dir / 'adpa'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignkit.train.methods.distill",
                                     description="Precompute DCKD/ADPA teacher top-k (and ADPA student samples) "
                                                 "for a run config, one model in memory at a time.")
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("precompute", help="compute and cache what the run in the config needs")
    pre.add_argument("-c", "--config", required=True, help="the run's YAML config (objective dckd or adpa)")
    pre.add_argument("overrides", nargs="*", help="dotted.key=value overrides, as for `alignkit train`")
    args = parser.parse_args(argv)
    from alignkit.train.config import load_config

    config = load_config(args.config, args.overrides)
    start = time.perf_counter()
    precompute(config)
    print(json.dumps({"done": True, "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["ADPAMethod", "DCKDMethod", "TeacherTopK", "cached_teacher_topk", "load_teacher_topk", "precompute",
           "precompute_teacher_topk", "teacher_signature", "teacher_topk"]
