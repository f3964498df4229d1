"""Reference policies: a frozen copy, the policy with its LoRA adapter disabled, or cached log-probs.

Each gives the same thing, reference log-probs for a batch, so objectives never know which one is used.
Live references take the policy's own batch, padded or shared-prefix/packed (``alignkit.engine.layouts``).
Precomputed log-probs are cached on disk keyed by a hash of the reference weights, the tokenizer, the
exact token ids of the data (which already encode template and truncation) and the engine settings, so a
later run on the same data and model reuses them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from alignkit.engine.layouts import Group, PackedBatch, SequenceBatch, build_groups
from alignkit.engine.logprobs import SequenceLogps, packing_capacity, sequence_logps
from alignkit.io import atomic_write
from alignkit.models.builtin import cache_root
from alignkit.parallel import gather_in_order

Rows = Sequence[tuple[list[int], list[int]]]


class FrozenCopyReference:
    """A deep copy of the initial policy with gradients off."""

    def __init__(self, model: nn.Module, chunk_size: int = 1024, autocast_dtype: torch.dtype | None = None):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.chunk_size, self.autocast_dtype = chunk_size, autocast_dtype

    @torch.no_grad()
    def logps(self, batch: SequenceBatch | PackedBatch) -> SequenceLogps:
        return sequence_logps(self.model, batch, self.chunk_size, self.autocast_dtype)


class AdapterDisabledReference:
    """The policy itself with its PEFT adapter switched off: no second copy of the weights in memory."""

    def __init__(self, peft_model: nn.Module, chunk_size: int = 1024, autocast_dtype: torch.dtype | None = None):
        if not hasattr(peft_model, "disable_adapter"):
            raise ValueError("reference 'adapter' needs a LoRA policy (lora.enabled: true)")
        self.model, self.chunk_size, self.autocast_dtype = peft_model, chunk_size, autocast_dtype

    @torch.no_grad()
    def logps(self, batch: SequenceBatch | PackedBatch) -> SequenceLogps:
        was_training = self.model.training
        self.model.eval()  # no LoRA dropout in the reference
        try:
            with self.model.disable_adapter():
                return sequence_logps(self.model, batch, self.chunk_size, self.autocast_dtype)
        finally:
            self.model.train(was_training)


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer (names, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    template = getattr(tokenizer, "chat_template", None) or ""
    return hashlib.sha256((vocab + template).encode()).hexdigest()


def rows_fingerprint(rows: Rows, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for prompt, response in rows:
        digest.update(json.dumps([prompt, response]).encode())
    return digest.hexdigest()


def _consecutive_groups(rows: Rows) -> list[Group]:
    """Runs of consecutive rows with the same prompt as shared-prefix groups; responses keep row order."""
    groups: list[Group] = []
    for prompt, response in rows:
        if groups and groups[-1][0] == prompt:
            groups[-1][1].append(response)
        else:
            groups.append((prompt, [response]))
    return groups


def _read_cache(path: Path, n_rows: int, log: Callable[[str], None]) -> PrecomputedReference | None:
    """A cached table, or None (a miss) when it is absent, unreadable or of the wrong size: a broken cache
    entry costs a recompute, never the run."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
        logps, tokens = tensors["logps"], tensors["tokens"]
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, recomputing fixes it
        log(f"reference log-probs: cache entry {path} is unreadable ({type(error).__name__}); recomputing")
        return None
    if logps.shape != (n_rows,) or tokens.shape != (n_rows,):
        log(f"reference log-probs: cache entry {path} has {tuple(logps.shape)} rows, expected {n_rows}; "
            "recomputing")
        return None
    return PrecomputedReference(logps, tokens)


def _everywhere(flag: bool, world: int) -> bool:
    """``flag`` holds on every process (one process: just ``flag``)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


class PrecomputedReference:
    """Reference log-probs computed once per row and looked up by row index afterwards."""

    def __init__(self, logps: Tensor, tokens: Tensor):
        self.table_logps, self.table_tokens = logps, tokens

    def lookup(self, indices: Tensor) -> Tensor:
        return self.table_logps[indices.cpu()]

    @classmethod
    def build(
        cls,
        model: nn.Module,
        tokenizer,
        rows: Rows,
        pad_id: int,
        batch_size: int = 8,
        chunk_size: int = 1024,
        autocast_dtype: torch.dtype | None = None,
        score_prompt: bool = False,
        shared_prefix: bool = False,
        cache_dir: Path | None = None,
        log: Callable[[str], None] = print,
        progress: Callable | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> PrecomputedReference:
        """Reference log-probs of ``rows``, from the on-disk cache when present. With ``world`` processes
        (every one calls this), batch k is computed by process k mod ``world``, the shares are gathered in row
        order, and the main process writes the cache; the cache key does not depend on ``world``."""
        from alignkit.engine.layouts import collate

        settings = {"score_prompt": score_prompt, "autocast": str(autocast_dtype), "v": 1,
                    "layout": "shared_prefix" if shared_prefix else "padded"}
        key = hashlib.sha256("|".join([model_fingerprint(model), tokenizer_fingerprint(tokenizer),
                                       rows_fingerprint(rows, settings)]).encode()).hexdigest()[:32]
        cache_dir = cache_dir or cache_root() / "reference_logps"
        path = cache_dir / f"{key}.safetensors"
        cached = _read_cache(path, len(rows), log)
        if _everywhere(cached is not None, world):
            log(f"reference log-probs: reused cache {path}")
            return cached
        device = next(model.parameters()).device
        starts = list(range(0, len(rows), batch_size))
        mine = [k for k in range(len(starts)) if k % world == rank]
        values = []
        was_training = model.training
        model.eval()
        share = sum(len(rows[starts[k]:starts[k] + batch_size]) for k in mine)
        ctx = progress(share) if progress else nullcontext(None)
        with torch.no_grad(), ctx as advance:
            for k in mine:
                part = rows[starts[k]:starts[k] + batch_size]
                batch = (build_groups(_consecutive_groups(part), pad_id, score_prompt, pack=True,
                                      row_tokens=packing_capacity(model)) if shared_prefix
                         else collate(part, pad_id, score_prompt))
                out = sequence_logps(model, batch.to(device), chunk_size, autocast_dtype)
                values.append((out.logps.float().cpu().tolist(), out.tokens.float().cpu().tolist()))
                if advance:
                    advance(len(part))
        model.train(was_training)
        batches = gather_in_order(len(starts), mine, values, world)
        logps = torch.tensor([v for lp, _ in batches for v in lp], dtype=torch.float32)
        tokens = torch.tensor([v for _, tk in batches for v in tk], dtype=torch.float32)
        if rank == 0:  # unique temp name + fsync + rename (alignkit.io): runs sharing the cache never see a torn entry
            atomic_write(path, lambda tmp: save_file({"logps": logps.contiguous(), "tokens": tokens.contiguous()},
                                                     str(tmp)))
            log(f"reference log-probs: computed {len(rows)} rows on {world} process(es), cached at {path}")
        return cls(logps, tokens)
