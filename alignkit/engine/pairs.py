"""Scoring preference pairs: one forward pass for chosen and rejected, in the best exact layout.

A pair is (prompt, chosen, rejected) token ids; a *joint* pair (DOVE) has a prompt per side and scores
the prompt tokens too (the joint log-prob of instruction and response). :func:`pair_batch` lays a batch of
pairs out once, so the policy and a reference score the very same batch; :func:`score_pair_batch` runs
one model on it; :func:`score_pairs` does both for a whole data set in micro-batches (evaluation, reward
models, reference precompute).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit.engine.layouts import PackedBatch, RowTokens, SequenceBatch, build_groups, collate
from alignkit.engine.logprobs import SequenceLogps, packing_capacity, sequence_logps

Layout = Literal["shared_prefix", "padded"]


@dataclass(frozen=True)
class PairRows:
    """Token ids of one pair; ``prompt_rejected`` is None when both sides share ``prompt``."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    prompt_rejected: list[int] | None = None


@dataclass
class PairBatch:
    """A laid-out batch of N pairs and where each side's sequence lands in the engine's output."""

    batch: SequenceBatch | PackedBatch
    order: Tensor | None  # permutation of the 2N outputs into [chosen..., rejected...] (None: already so)
    num_pairs: int

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens


@dataclass
class PairScores:
    """Per-pair sums (shapes [N]) for chosen and rejected."""

    chosen: SequenceLogps
    rejected: SequenceLogps


def pair_batch(pairs: Sequence[PairRows], pad_id: int, layout: Layout = "shared_prefix", score_prompt: bool = False,
               pack: bool = True, row_tokens: RowTokens = None, device: torch.device | None = None) -> PairBatch:
    """Lay ``pairs`` out as one batch. ``shared_prefix`` writes each prompt once with both responses (joint
    pairs with two prompts become two groups); ``padded`` writes one [prompt | response] row per side.
    The caller decides the layout (``alignkit.engine.exactness.layout_support`` says whether
    ``shared_prefix`` is exact for a model)."""
    n = len(pairs)
    if layout == "shared_prefix":
        groups = []
        for pair in pairs:
            if pair.prompt_rejected is None:
                groups.append((pair.prompt, [pair.chosen, pair.rejected]))
            else:
                groups += [(pair.prompt, [pair.chosen]), (pair.prompt_rejected, [pair.rejected])]
        batch: SequenceBatch | PackedBatch = build_groups(groups, pad_id, score_prompt, pack=pack,
                                                          row_tokens=row_tokens)
        # sequences are numbered group-major: (chosen, rejected) of pair 0, then of pair 1, ...
        order = torch.arange(2 * n).view(n, 2).t().reshape(-1)
    else:
        rows = [(p.prompt, p.chosen) for p in pairs]
        rows += [(p.prompt if p.prompt_rejected is None else p.prompt_rejected, p.rejected) for p in pairs]
        batch, order = collate(rows, pad_id, score_prompt), None
    if device is not None:
        batch = batch.to(device)
        order = order.to(device) if order is not None else None
    return PairBatch(batch, order, n)


def split_scores(out: SequenceLogps, laid_out: PairBatch) -> PairScores:
    """Chosen and rejected halves of an engine result on ``laid_out.batch``."""
    if laid_out.order is not None:
        order = laid_out.order.to(out.logps.device)
        out = SequenceLogps(out.logps[order], out.tokens[order], out.logits_mean[order])
    n = laid_out.num_pairs

    def half(part: slice) -> SequenceLogps:
        return SequenceLogps(out.logps[part], out.tokens[part], out.logits_mean[part])

    return PairScores(half(slice(0, n)), half(slice(n, 2 * n)))


def score_pair_batch(model: nn.Module, laid_out: PairBatch, chunk_size: int = 1024,
                     autocast_dtype: torch.dtype | None = None) -> PairScores:
    """Chosen and rejected log-probs of ``model`` on a laid-out batch (differentiable; no mode change)."""
    return split_scores(sequence_logps(model, laid_out.batch, chunk_size, autocast_dtype), laid_out)


@torch.no_grad()
def score_pairs(
    model: nn.Module,
    pairs: Sequence[PairRows],
    pad_id: int,
    batch_size: int = 8,
    layout: Layout = "shared_prefix",
    score_prompt: bool = False,
    autocast_dtype: torch.dtype | None = None,
    advance: Callable[[int], None] | None = None,
) -> PairScores:
    """Chosen and rejected summed log-probs of every pair, in the input order (eval mode, no gradients).

    Pairs are batched longest first, so similar lengths share a batch and an out-of-memory error shows at
    once; results go back to the input order. Tensors on the CPU, float64 for the sums."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(pairs)
    out = torch.zeros((6, n), dtype=torch.float64)

    def length(pair: PairRows) -> int:
        return len(pair.prompt) + len(pair.prompt_rejected or []) + max(len(pair.chosen), len(pair.rejected))

    order = sorted(range(n), key=lambda i: -length(pairs[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            laid_out = pair_batch([pairs[i] for i in idx], pad_id, layout, score_prompt,
                                  row_tokens=packing_capacity(model), device=device)
            scores = score_pair_batch(model, laid_out, autocast_dtype=autocast_dtype)
            index = torch.tensor(idx)
            for row, value in enumerate((scores.chosen.logps, scores.rejected.logps, scores.chosen.tokens,
                                         scores.rejected.tokens, scores.chosen.logits_mean,
                                         scores.rejected.logits_mean)):
                out[row, index] = value.double().cpu()
            if advance is not None:
                advance(len(idx))
    finally:
        model.train(was_training)
    return PairScores(SequenceLogps(out[0], out[2], out[4]), SequenceLogps(out[1], out[3], out[5]))
