"""The log-prob engine: per-sequence sums of response-token log-probabilities.

It knows nothing of objectives. Given rows of (prompt ids, response ids) it runs one forward pass and
returns, per row, the summed log-prob of the response tokens, their count and the mean logit (a TRL
metric). The vocabulary projection is applied only at response positions, in chunks, with
``gather - logsumexp`` (:func:`token_logps`, whose backward works in place); the full [batch, time, vocab] logits
tensor is never built.

Rows come padded (``collate``: one (prompt, response) per row) or in the shared-prefix / packed layouts
of ``alignkit.engine.layouts`` (one prompt with several responses per row, several groups per row), which
give the same log-probs with fewer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from alignkit.engine import segments
from alignkit.engine.layouts import PackedBatch, RowTokens, SequenceBatch, attention_implementation, collate


@dataclass
class SequenceLogps:
    logps: Tensor  # [N] summed response log-probs
    tokens: Tensor  # [N] scored token counts (float)
    logits_mean: Tensor  # [N] mean logit over response positions and vocabulary (detached)
    token_logps: Tensor | None = None  # [N, T] per-token log-probs at target positions (0 elsewhere)


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)  # PEFT
    return get_base() if callable(get_base) else model


def hidden_state_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, lm_head) when logits are a plain linear map of the last hidden state, else None."""
    base = _unwrap(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale",
                                                                                        None):
        return None
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def sequence_logps(
    model: nn.Module,
    batch: SequenceBatch | PackedBatch,
    chunk_size: int = 1024,
    autocast_dtype: torch.dtype | None = None,
    return_token_logps: bool = False,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    attention: str = "auto",
) -> SequenceLogps:
    """Summed log-probs of target tokens for every row of ``batch``.

    ``autocast_dtype`` (e.g. bf16) runs the transformer under autocast; the vocabulary projection's
    logsumexp is always done in float32. ``attention_mask``/``position_ids`` override the padded batch's
    own (used by packed and shared-prefix layouts, whose masks are 4-D).

    A :class:`~alignkit.engine.layouts.PackedBatch` (shared-prefix or packed rows) gives one result per
    *sequence* (response) rather than per row, with its 4-D mask built in the convention of the model's
    attention implementation; ``return_token_logps`` is not available for it. Its attention runs per
    segment (:mod:`alignkit.engine.segments`, skipping what the mask hides) when ``attention`` is
    ``"segments"``, or ``"auto"`` and the exactness probe passed for this model; ``"dense"`` forces the mask.
    """
    if isinstance(batch, PackedBatch):
        return _packed_logps(model, batch, chunk_size, autocast_dtype, return_token_logps, attention_mask,
                             attention)
    device = batch.input_ids.device
    mask = batch.attention_mask if attention_mask is None else attention_mask
    # position t predicts token t+1
    scored = batch.target_mask[:, 1:]
    n_rows, width = batch.input_ids.shape
    src = (torch.arange(n_rows, device=device)[:, None] * width
           + torch.arange(width - 1, device=device)[None, :])[scored]
    targets = batch.input_ids[:, 1:][scored]
    flat_lp, flat_logit = _score(model, batch.input_ids, mask, position_ids, src, targets, chunk_size,
                                 autocast_dtype)
    row_of = torch.arange(n_rows, device=device)[:, None].expand_as(scored)[scored]
    tokens = scored.sum(1).float()
    logps = torch.zeros(n_rows, device=device, dtype=torch.float32).index_add(0, row_of, flat_lp)
    logit_sums = torch.zeros(n_rows, device=device).index_add(0, row_of, flat_logit)
    token_logps = None
    if return_token_logps:
        token_logps = torch.zeros(scored.shape, device=device, dtype=torch.float32)
        token_logps = token_logps.masked_scatter(scored, flat_lp)
    return SequenceLogps(logps, tokens, logit_sums / tokens.clamp_min(1), token_logps)


def uses_segments(model: nn.Module, attention: str = "auto") -> bool:
    """Whether packed forwards of ``model`` run attention per segment (else they use the dense 4-D mask)."""
    if attention not in ("auto", "dense", "segments"):
        raise ValueError(f"attention must be auto, dense or segments, not {attention!r}")
    use = attention == "segments" or (attention == "auto" and segments.not_used_because(model) is None)
    if not use or attention_implementation(model) != "sdpa":
        return False
    # a checkpointed layer's recompute runs in the backward, outside the forward's segments.segment_attention():
    # per segment only when checkpointing re-enters it (segments.checkpoint_kwargs), else the dense mask
    checkpointed = getattr(_unwrap(getattr(model, "module", model)), "is_activation_checkpointing", False)
    return not checkpointed or segments.recomputes_in_segments(model)


def segment_plan(model: nn.Module, batch: PackedBatch, attention: str = "auto") -> segments.SegmentPlan | None:
    """The per-segment attention plan for ``batch`` (built once per batch, :meth:`PackedBatch.segment_plan`), or
    None for the dense 4-D mask."""
    if not uses_segments(model, attention) or not batch.spans:
        return None
    return batch.segment_plan()


def packing_capacity(model: nn.Module, configured: RowTokens = None) -> RowTokens:
    """How many tokens a packed row of ``model``'s batches holds: ``configured`` when set; else every group in
    one row when attention runs per segment (a longer row then costs nothing, and the padding that rows cut
    at the longest group carry, a quarter of the positions on HH-RLHF batches of 4 pairs, goes), else the
    longest group (the dense mask grows with the square of the row)."""
    if configured is not None:
        return configured
    return "all" if uses_segments(model) else None


def packed_mask(model: nn.Module, batch: PackedBatch, plan: segments.SegmentPlan | None) -> Tensor:
    """The attention mask handed to the model for ``batch``: the dense 4-D mask in the convention of its
    attention implementation, or, when ``plan`` runs attention per segment, a placeholder of that shape."""
    if plan is not None:
        return segments.placeholder_mask(batch.input_ids)
    return batch.attention_mask(attention_implementation(model) or "sdpa", _embedding_dtype(model))


def _packed_logps(model: nn.Module, batch: PackedBatch, chunk_size: int, autocast_dtype: torch.dtype | None,
                  return_token_logps: bool, attention_mask: Tensor | None, attention: str = "auto"
                  ) -> SequenceLogps:
    if return_token_logps:
        raise ValueError("return_token_logps needs a padded SequenceBatch (collate), not a PackedBatch")
    plan = None  # a caller's own mask is honoured as given
    if attention_mask is None:
        plan = segment_plan(model, batch, attention)
        attention_mask = packed_mask(model, batch, plan)
    flat_lp, flat_logit = _score(model, batch.input_ids, attention_mask, batch.position_ids, batch.score_src,
                                 batch.score_target, chunk_size, autocast_dtype, plan)
    device, n = batch.input_ids.device, batch.num_sequences
    seq = batch.score_seq
    logps = torch.zeros(n, device=device, dtype=torch.float32).index_add(0, seq, flat_lp[batch.score_entry])
    logit_sums = torch.zeros(n, device=device).index_add(0, seq, flat_logit[batch.score_entry])
    tokens = torch.bincount(seq, minlength=n).float()
    return SequenceLogps(logps, tokens, logit_sums / tokens.clamp_min(1))


def _embedding_dtype(model: nn.Module) -> torch.dtype:
    """The dtype transformers builds eager masks in (that of the input embeddings)."""
    embeddings = _unwrap(model).get_input_embeddings() if hasattr(_unwrap(model), "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return weight.dtype if weight is not None and weight.is_floating_point() else torch.float32


def _score(model: nn.Module, input_ids: Tensor, mask: Tensor, position_ids: Tensor | None, src: Tensor,
           targets: Tensor, chunk_size: int, autocast_dtype: torch.dtype | None,
           plan: segments.SegmentPlan | None = None) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets[m]`` given the hidden state at flat position ``src[m]``, and the mean logit
    there (detached). The vocabulary projection runs only at those positions, ``chunk_size`` at a time."""
    device = input_ids.device
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype
                else nullcontext())
    path = hidden_state_head(model)
    attention, extra = segments.forward_context(model, plan)
    with autocast, attention:
        if path is None:
            states = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **extra).logits
            head = None
        else:
            decoder, head = path
            states = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             use_cache=False, **extra).last_hidden_state
    selected = states.reshape(-1, states.shape[-1])[src]  # [M, H] (or [M, V] without a hidden path)
    token_lp_chunks, logit_mean_chunks = [], []
    for start in range(0, selected.shape[0], chunk_size):
        part = selected[start:start + chunk_size]
        with autocast:
            chunk_logits = head(part) if head is not None else part
        chunk_logits = chunk_logits.float()
        logit_mean_chunks.append(chunk_logits.detach().mean(-1))
        token_lp_chunks.append(token_logps(chunk_logits, targets[start:start + chunk_size]))
    flat_lp = torch.cat(token_lp_chunks) if token_lp_chunks else selected.new_zeros(0, dtype=torch.float32)
    flat_logit = torch.cat(logit_mean_chunks) if logit_mean_chunks else flat_lp.detach()
    return flat_lp, flat_logit


def token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """[M] ``log_softmax(logits)[m, targets[m]]`` for float32 ``logits`` [M, V] that nothing else reads after this
    call (its backward overwrites them)."""
    return _TokenLogps.apply(logits, targets)


class _TokenLogps(torch.autograd.Function):
    """The log-prob of each row's target: ``logits[target] - logsumexp(logits)``.

    Written out because the plain ops allocate a fresh [M, V] tensor at every step of the backward (logsumexp's
    shift, exp and product, gather's scatter, their sum): over a 49k vocabulary that is ~120 MB each per 600
    response tokens, seven or so per step, each first-touched page by page. Here the backward turns the logits it
    saved into the gradient in place, ``(onehot - softmax) * grad``, and the forward's logsumexp runs in row
    blocks through one scratch buffer. Same values as the plain ops up to float reordering."""

    ROWS = 64  # logsumexp row block: 64 x 49k floats = 12.6 MB of temporaries

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        lse = _row_logsumexp(logits, _TokenLogps.ROWS)
        ctx.save_for_backward(logits, targets, lse)
        ctx.spent = False
        return logits.gather(-1, targets[:, None]).squeeze(-1) - lse

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.spent:
            raise RuntimeError("token log-probs can be back-propagated once (the backward reuses their logits)")
        ctx.spent = True
        logits, targets, lse = ctx.saved_tensors
        # in place, unless the logits are a view (chunks of one logits tensor, for models without a plain
        # hidden-state head): views share a version counter, and writing one would fail the other chunks' backward
        shifted = logits.sub(lse[:, None]) if logits._base is not None else logits.sub_(lse[:, None])
        gradient = shifted.exp_().mul_(-grad[:, None])  # -softmax * grad
        gradient.scatter_add_(-1, targets[:, None], grad[:, None])  # + onehot * grad
        return gradient, None


def _row_logsumexp(logits: Tensor, rows: int) -> Tensor:
    """``logits.logsumexp(-1)`` (no autograd), ``rows`` rows at a time through one scratch block: ``logsumexp``
    itself allocates a fresh block-sized temporary per call, and the allocator hands each one back to the system,
    so every block paid its page faults again (15 ms per 64 x 49k block, against ~2 ms for the arithmetic)."""
    lse = logits.new_empty(logits.shape[:-1])
    scratch = logits.new_empty((min(rows, logits.shape[0]), logits.shape[-1]))
    for start in range(0, logits.shape[0], rows):
        block = logits[start:start + rows]
        peak = block.amax(-1, keepdim=True)
        peak.masked_fill_(peak.isinf(), 0)  # as torch.logsumexp: an infinite peak is not subtracted
        shifted = torch.sub(block, peak, out=scratch[:block.shape[0]])
        lse[start:start + rows] = shifted.exp_().sum(-1).log_().add_(peak.squeeze(-1))
    return lse


@dataclass
class ResponseLogits:
    logits: Tensor  # [N, T, V]: position t is the distribution that predicted response token t
    labels: Tensor  # [N, T] response tokens (0 at padding)
    mask: Tensor  # [N, T] bool
    num_tokens: int


def response_logits(model: nn.Module, rows: Sequence[tuple[list[int], list[int]]], pad_id: int,
                    autocast_dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> ResponseLogits:
    """Full-vocabulary logits at the response positions only, response-aligned and right-padded.

    The vocabulary projection runs on the gathered response positions, never on the prompt's."""
    batch = collate(rows, pad_id)
    device = device or next(model.parameters()).device
    batch = batch.to(device)
    lengths = torch.tensor([len(r) for _, r in rows], device=device)
    starts = torch.tensor([len(p) for p, _ in rows], device=device) - 1  # the position predicting token 0
    width = int(lengths.max())
    steps = torch.arange(width, device=device)
    mask = steps[None, :] < lengths[:, None]
    source = (starts[:, None] + steps[None, :]).clamp(max=batch.input_ids.shape[1] - 1)
    labels = torch.where(mask, batch.input_ids.gather(1, (source + 1).clamp(max=batch.input_ids.shape[1] - 1)), 0)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    path = hidden_state_head(model)
    with autocast:
        if path is None:
            full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logits = full.gather(1, source[..., None].expand(-1, -1, full.shape[-1]))
        else:
            decoder, head = path
            hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             use_cache=False).last_hidden_state
            logits = head(hidden.gather(1, source[..., None].expand(-1, -1, hidden.shape[-1])))
    return ResponseLogits(logits.float(), labels, mask, batch.num_tokens)
