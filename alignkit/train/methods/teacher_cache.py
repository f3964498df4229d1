"""Teacher top-k tables for preference distillation (DCKD and ADPA; see ``dckd`` and ``adpa``).

Teachers never sit in memory during training. Their token distributions over the response tokens of every
row are computed once, compressed to the top-k log-probs per position (the rest of the vocabulary is one
"other" bucket, as in Gao et al., "Advantage-Guided Distillation for Preference Alignment in Small Language
Models", ICLR 2025, arXiv 2502.17927), and stored in safetensors: ``idx`` [M, K] int32, ``logprobs`` [M, K]
float32 and ``lengths`` [R] for R rows with M = Σ lengths response tokens. A table is keyed by the teacher
(its spec plus the names, sizes and mtimes of a local model's files), the exact token ids and k, so retraining
a teacher into the same directory or changing the data recomputes it. The logits come from
:func:`alignkit.engine.logprobs.response_logits`.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from alignkit.engine.logprobs import response_logits
from alignkit.io import atomic_write
from alignkit.train.methods.base import Rows
from alignkit.train.reference import rows_fingerprint

TOPK_FORMAT = 1
PRECOMPUTE_COMMAND = "python -m alignkit.train.methods.distill precompute -c <config>"


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


def save_tables(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` atomically: an interrupted write never leaves a truncated table behind."""
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_tables(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def precompute_teacher_topk(teacher: nn.Module, rows: Rows, k: int, out_path: str | Path, pad_id: int,
                            batch_size: int = 8, autocast_dtype: torch.dtype | None = None,
                            log: Callable[[str], None] | None = print) -> Path:
    """Compute the teacher's top-k over the response tokens of ``rows`` ((prompt ids, response ids), token
    ids of the *student's* tokenizer, which the teacher must share) and write them to ``out_path``
    (metadata ``rows`` is the rows' fingerprint, checked by :func:`load_teacher_topk`)."""
    table = teacher_topk(teacher, rows, k, pad_id, batch_size, autocast_dtype, log)
    metadata = {"format": str(TOPK_FORMAT), "k": str(k), "rows": rows_fingerprint(rows, {"k": k})}
    return save_tables(Path(out_path), table.tensors(), metadata)


def load_teacher_topk(path: str | Path, rows: Rows | None = None) -> TeacherTopK:
    """A table written by :func:`precompute_teacher_topk`; with ``rows``, refuse one computed for other rows."""
    tensors, metadata = load_tables(Path(path))
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


def load_teacher(spec: str, tokenizer, device: torch.device | str | None, log: Callable[[str], None]) -> nn.Module:
    """A frozen teacher in eval mode; its vocabulary must be the student's."""
    from alignkit.models import load_model

    teacher, teacher_tokenizer = load_model(spec, device=str(device) if device is not None else "auto", log=log)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"teacher {spec!r} has a different vocabulary from the student; DCKD/ADPA need a "
                         f"shared tokenizer")
    return teacher.eval().requires_grad_(False)


def free_memory() -> None:
    """Return a dropped model's memory before the next one loads (callers drop their references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_vocab(idx: Tensor, vocab: int) -> None:
    if idx.numel() and int(idx.max()) >= vocab:
        raise ValueError(f"teacher token index {int(idx.max())} is outside the student's vocabulary ({vocab}); "
                         f"teacher and student must share a tokenizer")


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
                f"out of memory during training: {PRECOMPUTE_COMMAND})")
            teacher = load_teacher(spec, tokenizer, device, log)
        for i in missing:
            precompute_teacher_topk(teacher, row_sets[i], k, paths[i], tokenizer.pad_token_id, batch_size, log=log)
            log(f"teacher top-{k} of {spec}: cached at {paths[i]}")
        if own:
            teacher = None
            free_memory()
    for i, path in enumerate(paths):
        if i not in missing:
            log(f"teacher top-{k} of {spec}: reused {path}")
    return [load_teacher_topk(path, rows) for path, rows in zip(paths, row_sets, strict=True)]


def default_cache_dir(value: Any) -> Path:
    """``value`` as a directory, or ``<alignkit cache>/teacher_topk``."""
    if value:
        return Path(value).expanduser()
    from alignkit.models.builtin import cache_root

    return cache_root() / "teacher_topk"


__all__ = ["TOPK_FORMAT", "TeacherTopK", "cached_teacher_topk", "check_vocab", "default_cache_dir", "free_memory",
           "load_tables", "load_teacher", "load_teacher_topk", "precompute_teacher_topk", "save_tables",
           "teacher_signature", "teacher_topk"]
