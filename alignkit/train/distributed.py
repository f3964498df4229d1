"""Data-parallel plumbing on accelerate: which process writes, how metrics are reduced, how a failure on the
main process reaches the others.

The loop runs the same code on every process (``torchrun`` or ``accelerate launch``); DDP (or FSDP /
DeepSpeed through accelerate's plugins) averages gradients. What differs per process is only the shard of
each global batch it draws (``alignkit.train.batching``) and whether it writes: the main process alone
writes the run directory, after every process's metrics have been reduced into one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate import Accelerator

T = TypeVar("T")


def reduce_metrics(accelerator: Accelerator, metrics: dict[str, float], examples: int,
                   summed: tuple[str, ...] = ()) -> dict[str, float]:
    """Example-weighted means across processes (keys in ``summed`` are added instead), so the logged line
    for a step is the same whatever the process count. Every process must pass the same keys."""
    if accelerator.num_processes == 1:
        return dict(metrics)
    keys = sorted(metrics)
    local = torch.tensor([metrics[k] * (1 if k in summed else examples) for k in keys] + [examples],
                         dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").cpu()
    weight = float(total[-1])
    return {k: float(total[i]) if k in summed else float(total[i]) / max(weight, 1.0) for i, k in enumerate(keys)}


def main_first(accelerator: Accelerator, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on the main process only, then let every process go on; an exception on the main process
    is re-raised on every process (as the same type when it can be rebuilt from its message), so no
    process waits forever for one that failed."""
    if accelerator.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None]
    result = None
    if accelerator.is_main_process:
        try:
            result = fn()
        except Exception as error:  # noqa: BLE001 - shipped to the other processes, then re-raised
            outcome[0] = (type(error), str(error))
            broadcast_object_list(outcome)
            raise
    broadcast_object_list(outcome)
    if outcome[0] is not None:
        kind, message = outcome[0]
        try:
            raise kind(message)
        except TypeError:
            raise RuntimeError(f"the main process failed: {message}") from None
    accelerator.wait_for_everyone()
    return result


def main_only(accelerator: Accelerator, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only and hand its result to every process (an exception on the main
    process is re-raised everywhere, as in :func:`main_first`)."""
    if accelerator.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    shared: list[Any] = [main_first(accelerator, fn)]
    broadcast_object_list(shared)
    return shared[0]


def eval_context(ctx):
    """The batch context evaluation runs with: the DDP wrapper taken off the model, so a forward on one
    process starts no collective (DDP broadcasts buffers at every forward) and processes may run different
    numbers of eval forwards. FSDP and DeepSpeed keep their wrapper: their forward needs every process."""
    from dataclasses import replace

    from torch.nn.parallel import DistributedDataParallel

    if isinstance(ctx.model, DistributedDataParallel):
        return replace(ctx, model=ctx.model.module)
    return ctx


def sharded_evaluate(accelerator: Accelerator, method, ctx, items: list, batch_size: int, precomputed,
                     state: dict) -> dict[str, float]:
    """The method's eval metrics, the same on every process. Under DDP, the shared batch-by-batch evaluation
    (``Method.evaluate``) splits the batches across processes and adds up the sums, and a method with its own
    ``evaluate`` (whole-set statistics: DOVE, the online methods, ADPA, ...) runs it on the main process only
    and shares the result, so no process repeats another's work. A sharded model (FSDP, DeepSpeed) needs every
    process in every forward, so there each process evaluates the whole set."""
    from alignkit.train.methods.base import Method

    plain = eval_context(ctx)
    if accelerator.num_processes == 1 or plain is ctx:
        return method.evaluate(ctx, items, batch_size, precomputed, state)
    if type(method).evaluate is not Method.evaluate:
        return main_only(accelerator, lambda: method.evaluate(plain, items, batch_size, precomputed, state))
    from accelerate.utils import gather_object

    sums, count = method.evaluate_sums(plain, items, batch_size, precomputed, state, accelerator.process_index,
                                       accelerator.num_processes)
    totals: dict[str, float] = {}
    examples = 0
    for part_sums, part_count in gather_object([(sums, count)]):
        examples += part_count
        for key, value in part_sums.items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / max(examples, 1) for key, value in totals.items()}
