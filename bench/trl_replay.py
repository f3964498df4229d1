"""TRL's DPOTrainer fed alignkit's batches: the replay shared by ``bench/dpo_throughput.py`` and
``tests/train/test_trl_tokenisation.py`` (which imports this file by path; ``bench/`` is not a package).

alignkit's loop draws micro-batches with :func:`alignkit.train.data.batch_order`; TRL gets a sampler that
replays the same row order, so both trainers see the same pairs in the same batches and their per-step
losses compare the trainers, not the data order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def replay_order(n: int, batch_size: int, steps: int) -> list[int]:
    """Row indices of alignkit's first ``steps`` batches of ``n`` rows (seed 0), flattened."""
    from alignkit.train.data import batch_order

    batches = batch_order(n, batch_size, 0)
    return [i for _ in range(steps) for i in next(batches)]


def replay_trainer(order: list[int], on_loss: Callable[[Any, float], None]) -> type:
    """A ``DPOTrainer`` subclass that draws rows in ``order`` and calls ``on_loss(trainer, loss)`` after each
    loss computation (the trainer, so a caller can read that step's ``trainer._metrics``)."""
    import torch
    from trl import DPOTrainer

    class Replay(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(order)

        def __len__(self):
            return len(order)

    class ReplayTrainer(DPOTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return Replay()

        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            on_loss(self, float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

    return ReplayTrainer
