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


def micro_batches(config, items: list, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[list[int]]:
    """This process's micro-batches: fixed ``batch_size`` batches, or token-budget batches when
    ``max_tokens_per_batch`` is set.

    With ``world`` processes the order is drawn once, as global batches of ``batch_size x world`` examples,
    and process ``rank`` takes its own slice of each, so 2 processes x 2 pairs see per optimizer step the
    pairs 1 process x 4 pairs sees. Token-budget batches are dealt round-robin (batch k of the global
    order goes to process k mod world). ``start`` counts micro-batches per process (global batches)."""
    if not getattr(config, "max_tokens_per_batch", None):
        size = config.batch_size
        return (batch[rank * size:(rank + 1) * size]
                for batch in batch_order(len(items), size * world, config.seed, start=start))
    lengths = [example_tokens(item, config.layout == "shared_prefix") for item in items]
    order = token_budget_order(lengths, config.max_tokens_per_batch, config.seed, start=start * world)
    return (batch for k, batch in enumerate(order) if k % world == rank)
