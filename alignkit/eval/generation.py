"""Batched generation from prompts, with the same prompt encoding as training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from alignkit.data.records import Text
from alignkit.data.tokenize import PromptEncoder


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Text],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    system: str | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[str]:
    """Replies to ``prompts`` (greedy by default), left-padded batches, decoded without special tokens."""
    device = next(model.parameters()).device
    was_training = model.training
    # the caller's random state is left as it was: sampling uses its own seeded stream
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.eval()
        try:
            return _generate_batches(model, tokenizer, prompts, max_new_tokens, batch_size, do_sample, temperature,
                                     top_p, system, progress, autocast_dtype, device)
        finally:
            model.train(was_training)


def _generate_batches(model: nn.Module, tokenizer, prompts: Sequence[Text], max_new_tokens: int, batch_size: int,
                      do_sample: bool, temperature: float, top_p: float, system: str | None,
                      progress: Callable[[int], None] | None, autocast_dtype: torch.dtype | None,
                      device: torch.device) -> list[str]:
    encoder = PromptEncoder(tokenizer)
    # sort by length so each batch pads little; restore the order at the end
    encoded = [encoder.encode_prompt(p, system) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    by_index: dict[int, str] = {}
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(encoded[i])
            ids[row, width - n:] = torch.tensor(encoded[i])
            mask[row, width - n:] = 1
        with autocast:
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
        for row, i in enumerate(chunk):
            by_index[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
        if progress:
            progress(len(chunk))
    return [by_index[i] for i in range(len(prompts))]
