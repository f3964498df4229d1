"""Several processes for work without gradients (evaluation): who am I, which share is mine, and putting the
shares back together in input order. Under ``torchrun`` / ``accelerate launch`` the process group is set up
through accelerate (gloo on CPU, NCCL on GPUs); in one process everything here is a no-op."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def process_group() -> tuple[int, int]:
    """(rank, world size); initialises the process group through accelerate when launched as several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState(cpu=not _cuda())
    return state.process_index, state.num_processes


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def my_share(n: int, rank: int, world: int) -> list[int]:
    """The input positions process ``rank`` handles: every ``world``-th, so lengths stay mixed per process."""
    return list(range(rank, n, world))


def gather_in_order(n: int, mine: Sequence[int], values: Sequence[Any], world: int) -> list[Any]:
    """Every process's ``values`` (one per position in ``mine``) as one list in input order, on every
    process."""
    if world == 1:
        return list(values)
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (list(mine), list(values)))
    out: list[Any] = [None] * n
    for positions, part in parts:
        for position, value in zip(positions, part, strict=True):
            out[position] = value
    return out


def is_main() -> bool:
    return process_group()[0] == 0
