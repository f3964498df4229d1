"""Hidden states at chosen positions: one backbone forward over padded, shared-prefix or packed rows, the
last hidden state gathered where a small head reads it (a scalar score head, a value head).

It knows nothing of what the head computes. :func:`last_token_positions` says where each sequence of a
batch ends; :func:`hidden_at` runs a decoder (a transformers base model returning ``last_hidden_state``,
e.g. ``LlamaModel``) with the batch's own mask and position ids and gathers those positions. In the
shared-prefix and packed layouts (``alignkit.engine.layouts``) each response's last token sees the prompt
and its own response only, with positions restarting after the prompt, so its hidden state is the one the
padded row [prompt | response] gives, while the prompt is fed once per group.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from alignkit.engine import segments
from alignkit.engine.layouts import PackedBatch, SequenceBatch
from alignkit.engine.logprobs import packed_mask, segment_plan


def last_token_positions(batch: SequenceBatch | PackedBatch) -> Tensor:
    """[N] flat positions (row * T + t) of the last token of every sequence, in the engine's sequence order.

    Padded rows (``collate``): each row's last attended token (rows are right-padded). Shared-prefix / packed
    rows (``build_groups``): the last token of each response, sequences numbered group-major; it is the token
    after the position that predicts the response's last token, so every response must hold at least one
    scored token (a non-empty response after a non-empty prompt)."""
    if isinstance(batch, SequenceBatch):
        rows, width = batch.input_ids.shape
        lengths = batch.attention_mask.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("a row of the batch is empty")
        return torch.arange(rows, device=lengths.device) * width + lengths - 1
    n = batch.num_sequences
    src = batch.score_src[batch.score_entry]
    counts = torch.bincount(batch.score_seq, minlength=n)
    if bool((counts == 0).any()):
        raise ValueError("every sequence of a shared-prefix batch needs a non-empty response after a non-empty "
                         "prompt to locate its last token")
    last_src = torch.full((n,), -1, dtype=torch.long, device=src.device)
    last_src = last_src.scatter_reduce(0, batch.score_seq, src, reduce="amax")
    return last_src + 1


def hidden_at(decoder: nn.Module, batch: SequenceBatch | PackedBatch, positions: Tensor,
              autocast_dtype: torch.dtype | None = None) -> Tensor:
    """[len(positions), H] last hidden states of ``decoder`` on ``batch`` at flat ``positions`` (differentiable;
    no mode change). A :class:`PackedBatch` gets its 4-D mask in the convention of the decoder's attention
    implementation, and its own position ids."""
    device = batch.input_ids.device
    if isinstance(batch, PackedBatch):
        plan = segment_plan(decoder, batch)
        mask, position_ids = packed_mask(decoder, batch, plan), batch.position_ids
    else:
        mask, position_ids, plan = batch.attention_mask, None, None
    autocast = torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    attention, extra = segments.forward_context(decoder, plan)
    with autocast, attention:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=position_ids,
                         use_cache=False, **extra).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1])[positions.to(device)]


__all__ = ["hidden_at", "last_token_positions"]
