"""Train/eval splits of any list of records: a seeded held-out fraction, then caps."""

from __future__ import annotations

import random
from typing import TypeVar

R = TypeVar("R")

__all__ = ["split_and_cap"]


def split_and_cap(train: list[R], evaluation: list[R] | None, eval_fraction: float, seed: int,
                  max_train: int | None, max_eval: int | None) -> tuple[list[R], list[R]]:
    """Hold out ``eval_fraction`` of ``train`` (at least one record unless the fraction is 0, which means no
    held-out split; shuffled with ``seed``) when there is no ``evaluation`` set, then cap each split at
    ``max_train`` / ``max_eval`` records (None: no cap)."""
    if evaluation is None and eval_fraction <= 0:
        evaluation = []  # nothing held out: train keeps the file's order
    elif evaluation is None:
        shuffled = train[:]
        random.Random(seed).shuffle(shuffled)
        n_eval = max(1, int(len(shuffled) * eval_fraction))
        evaluation, train = shuffled[:n_eval], shuffled[n_eval:]
    if max_train is not None:
        train = train[:max_train]
    if max_eval is not None:
        evaluation = evaluation[:max_eval]
    return train, evaluation
