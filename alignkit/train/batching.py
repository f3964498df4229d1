"""Micro-batch order for training: fixed-size batches or token-budget, length-grouped ones."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from alignkit.train.data import batch_order


def token_budget_batches(lengths: Sequence[int], max_tokens: int, seed: int = 0, window: int = 256,
                         shuffle: bool = True) -> list[list[int]]:
    """Micro-batches of example indices whose lengths sum to at most ``max_tokens`` (an example longer
    than the budget is a batch of its own). Length grouping: examples are shuffled, then sorted by length
    within windows of ``window`` examples so a batch holds similar lengths (little padding, tight packing)
    while the epoch stays random; the batches themselves are shuffled again."""
    if max_tokens <= 0:
        raise ValueError("max_tokens_per_batch must be positive")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        current: list[int] = []
        used = 0
        for index in chunk:
            if current and used + lengths[index] > max_tokens:
                batches.append(current)
                current, used = [], 0
            current.append(index)
            used += lengths[index]
        if current:
            batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def token_budget_order(lengths: Sequence[int], max_tokens: int, seed: int, start: int = 0
                       ) -> Iterator[list[int]]:
    """Endless epochs of ``token_budget_batches``, reshuffled per epoch from ``seed``; ``start`` skips the
    micro-batches already consumed, so a resumed run sees the batches an uninterrupted one would."""
    if not lengths:
        raise ValueError("no training examples to batch")
    epoch, position = 0, 0
    while True:
        batches = token_budget_batches(lengths, max_tokens, seed=seed * 100_003 + epoch)
        for batch in batches:
            if position >= start:
                yield batch
            position += 1
        epoch += 1


def example_tokens(item, shared_prefix: bool) -> int:
    """Tokens an encoded pair (or single example) costs in a batch under the given layout."""
    if hasattr(item, "chosen"):
        prompt = len(item.prompt) * (1 if shared_prefix else 2)
        return prompt + len(item.chosen) + len(item.rejected)
    return len(item.prompt) + len(item.response)


def micro_batches(config, items: list, start: int = 0) -> Iterator[list[int]]:
    """The loop's micro-batch order: fixed ``batch_size`` batches, or token-budget batches when
    ``max_tokens_per_batch`` is set."""
    if not getattr(config, "max_tokens_per_batch", None):
        return batch_order(len(items), config.batch_size, config.seed, start=start)
    lengths = [example_tokens(item, config.layout == "shared_prefix") for item in items]
    return token_budget_order(lengths, config.max_tokens_per_batch, config.seed, start=start)
