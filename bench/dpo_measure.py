"""Measurements of ``bench/dpo_throughput.py`` (importable there because the script's directory is on
``sys.path``): step durations, the machine's matmul peak, and where one training step's time goes.

The time split: one extra step after the timed ones (so the profiler's overhead touches no timed step)
runs under ``torch.profiler`` (CPU) and its self CPU time is split into buckets.

Each profiled event's *self* CPU time (its time minus its children's, so nothing is counted twice) goes
to the first bucket that matches the event or any event enclosing it (its CPU parents), in this order:

1. ``optimizer``: inside a ``torch.optim`` step or zero_grad (torch wraps them in record_function ranges
   named ``Optimizer.step#AdamW.step`` / ``Optimizer.zero_grad#...``). Gradient clipping is not inside
   them and falls to ``other``.
2. ``lm_head``: the vocabulary projection and what acts on its output: a matmul (``aten::mm``,
   ``aten::addmm``, ``aten::matmul``, ``aten::linear``) with any input dimension equal to the vocabulary
   size (forward [T, d] x [d, V] and both backward products), or any op with an input whose last dimension
   is the vocabulary size (log-softmax, logsumexp, gather, casts and copies of the logits, their
   backward). Decided by shape (``record_shapes=True``), so a hidden or MLP width equal to the vocabulary
   size would be misread (not the case for the models here). Also everything inside an event whose name
   says log-prob (TRL's ``ChunkedLogProbFunction`` and its backward, which project chunks of the
   vocabulary, so their shapes do not show its size).
3. ``attention``: scaled-dot-product attention and everything inside it (names containing
   ``scaled_dot_product`` / ``flash_attention`` / ``efficient_attention``, also the autograd nodes
   ``ScaledDotProduct...Backward``), and ``bmm`` / ``baddbmm`` / ``softmax`` (eager attention's, with
   ``BmmBackward0`` and the softmax backward).
4. ``linear``: the remaining matmuls (the decoder's q/k/v/o and MLP projections, forward, and backward
   with their autograd nodes ``MmBackward0`` / ``AddmmBackward0``).
5. ``other``: the rest (norms, rotary embeddings, activations, residual adds, masks and layout building,
   embedding lookup, gradient accumulation and clipping, loss arithmetic, Python overhead of ranges).

Self time is the calling thread's time in the op (intra-op worker threads are not added), so the shares
are of the step's time on the main thread, as a sampling profiler would see it.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Iterator


def durations(marks: list[tuple[float, float]], steps: int) -> dict[str, list[float]]:
    """Wall and CPU seconds between consecutive marks, of the first ``steps`` steps (not the profiled one).
    CPU time (all threads of the process) is the fairer figure on a machine shared with other jobs: it counts
    the work done, not the time spent waiting."""
    pairs = list(zip(marks, marks[1:], strict=False))[:steps]
    return {"step_seconds": [b[0] - a[0] for a, b in pairs], "step_cpu_seconds": [b[1] - a[1] for a, b in pairs]}


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best-of FLOP/s of a square matmul in fp32 and bf16 (the ceiling the model's matmuls could reach)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * size**3 / best
    return out


BUCKETS = ("attention", "linear", "lm_head", "optimizer", "other")
MATMULS = {"aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::_addmm_activation"}
ATTENTION_OPS = {"aten::bmm", "aten::baddbmm", "aten::softmax", "aten::_softmax", "aten::_softmax_backward_data"}
ATTENTION_WORDS = ("scaleddotproduct", "flashattention", "efficientattention", "bmmbackward")


def _shapes(event) -> Iterator[list[int]]:
    """The input shapes of an event; a tensor list's shapes one by one."""
    for shape in getattr(event, "input_shapes", None) or []:
        if shape and isinstance(shape[0], list):
            yield from (s for s in shape if isinstance(s, list))
        elif isinstance(shape, list):
            yield shape


def _touches_vocab(event, vocab_size: int) -> bool:
    if event.name in MATMULS:
        return any(vocab_size in shape for shape in _shapes(event))
    return any(shape and shape[-1] == vocab_size for shape in _shapes(event))


def _is_attention(name: str) -> bool:
    squashed = name.replace("_", "").lower()
    return name in ATTENTION_OPS or any(word in squashed for word in ATTENTION_WORDS)


def _is_matmul(name: str) -> bool:
    return name in MATMULS or name.endswith(("MmBackward0", "AddmmBackward0"))


def bucket_of(event, vocab_size: int) -> str:
    """The bucket of one profiler event (see the module docstring for the rules and their order)."""
    chain = []
    while event is not None:
        chain.append(event)
        event = event.cpu_parent
    names = [e.name for e in chain]
    if any(n.startswith(("Optimizer.step#", "Optimizer.zero_grad#")) for n in names):
        return "optimizer"
    log_prob_range = any("logprob" in n.replace("_", "").lower() for n in names)  # TRL's chunked kernel
    if log_prob_range or any(_touches_vocab(e, vocab_size) for e in chain):
        return "lm_head"
    if any(_is_attention(n) for n in names):
        return "attention"
    if any(_is_matmul(n) for n in names):
        return "linear"
    return "other"


def time_split(events, vocab_size: int, top: int = 12) -> dict:
    """Self CPU seconds and shares per bucket, and the ``top`` ops by self time (with their bucket)."""
    seconds = dict.fromkeys(BUCKETS, 0.0)
    per_op: Counter[tuple[str, str]] = Counter()
    for event in events:
        bucket = bucket_of(event, vocab_size)
        self_seconds = event.self_cpu_time_total / 1e6  # microseconds
        seconds[bucket] += self_seconds
        per_op[(event.name, bucket)] += self_seconds
    total = sum(seconds.values())
    return {"self_cpu_seconds": total, "seconds": seconds,
            "shares": {b: s / total if total else 0.0 for b, s in seconds.items()},
            "top_ops": [{"name": name, "bucket": bucket, "self_cpu_seconds": s}
                        for (name, bucket), s in per_op.most_common(top)]}


class StepProfiler:
    """Profiles one step: ``start()`` at its beginning, ``stop()`` at its end, then ``report()``.

    ``rss_before_mb`` is the process's peak RSS when the profiled step starts: the peak of the timed steps,
    without whatever the profiler itself holds."""

    def __init__(self) -> None:
        self._profile = None
        self._started = self._stopped = 0.0
        self.rss_before_mb: float | None = None

    @property
    def running(self) -> bool:
        return self._profile is not None and not self._stopped

    def start(self) -> None:
        import torch

        self.rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
        self._profile.start()
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self.running:
            self._profile.stop()
            self._stopped = time.perf_counter()

    @staticmethod
    def result(profiler: StepProfiler | None, model, window: str) -> dict:
        """A worker's result fields: the profiled step's time split and the peak RSS before it."""
        if profiler is None:
            return {}
        vocab_size = model.get_output_embeddings().weight.shape[0]
        return {"profile": profiler.report(vocab_size, window), "peak_rss_mb": profiler.rss_before_mb}

    def report(self, vocab_size: int, window: str) -> dict | None:
        if self._profile is None or not self._stopped:
            return None
        return {"window": window, "wall_seconds": self._stopped - self._started,
                **time_split(self._profile.events(), vocab_size)}


def print_split(rows: dict[str, dict]) -> None:
    """The time split table of a case's result rows (those with a ``profile``)."""
    if not any(r.get("profile") for r in rows.values()):
        return
    print(f"{'time split (self CPU)':38} " + " ".join(f"{b:>9}" for b in BUCKETS))
    for r in rows.values():
        shares = (r.get("profile") or {}).get("shares", {})
        print(f"{r['config']:38} " + " ".join(f"{shares.get(b, float('nan')):9.1%}" for b in BUCKETS))
