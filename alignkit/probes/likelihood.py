"""Answering a multiple-choice question by likelihood: each option's continuation (its label, or its text
when options carry no label) is scored after the prompt through the engine, and the per-token mean
log-probs are turned into one probability per option with a softmax.

A question is one *group* (the prompt plus one continuation per option). Where the shared-prefix layout
is exact for the model (``alignkit.engine.exactness.layout_support``) the prompt is fed once per group and
groups are packed into rows; otherwise every (prompt, option) pair is its own padded row. Both give the
same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from alignkit.engine.exactness import layout_support
from alignkit.engine.layouts import Group, build_groups, collate
from alignkit.engine.logprobs import packing_capacity, sequence_logps

NORMALISATIONS = ("mean", "sum")


def softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


@torch.no_grad()
def group_logps(model, pad_id: int, groups: Sequence[Group], batch_size: int = 8,
                advance: Callable[[int], None] | None = None) -> list[list[tuple[float, int]]]:
    """(summed log-prob, token count) of every continuation of every group, in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        shared = layout_support(model, pad_id) is None
        out: list[list[tuple[float, int]]] = []
        for start in range(0, len(groups), batch_size):
            part = groups[start:start + batch_size]
            if shared:
                batch = build_groups(part, pad_id, pack=True, row_tokens=packing_capacity(model))
            else:  # sequences come out group-major either way
                batch = collate([(prompt, r) for prompt, responses in part for r in responses], pad_id)
            scored = sequence_logps(model, batch.to(device))
            logps, tokens = scored.logps.double().cpu().tolist(), scored.tokens.cpu().tolist()
            cursor = 0
            for _, responses in part:
                out.append([(logps[cursor + k], int(tokens[cursor + k])) for k in range(len(responses))])
                cursor += len(responses)
            if advance is not None:
                advance(len(part))
    finally:
        model.train(was_training)
    return out


def option_probabilities(scores: Sequence[tuple[float, int]], normalise: str = "mean") -> list[float]:
    """P(option) = softmax over options of the per-token mean (or summed) log-prob of its continuation."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    values = [lp / max(n, 1) if normalise == "mean" else lp for lp, n in scores]
    return softmax(values)


def continuation_ids(tokenizer, text: str, use_chat_template: bool) -> list[int]:
    """Token ids of an answer right after the rendered prompt: the chat template opens the assistant turn
    on a fresh line; the plain ``Assistant:`` rendering needs the space a reply would start with."""
    return tokenizer(("" if use_chat_template else " ") + text, add_special_tokens=False).input_ids
