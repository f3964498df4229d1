"""Activation checkpointing: which layer activations the backward pass recomputes instead of keeping.

Two kinds, per decoder layer, combinable:

* **full** (``activation_checkpointing``, every ``activation_checkpointing_every``-th layer): the layer keeps only
  its input and reruns its whole forward in the backward pass. Saves all of the layer's activations for about a
  third more compute per layer.
* **selective** (``selective_checkpointing``, the layers not fully checkpointed): the layer keeps the outputs of
  its matrix products and of attention and recomputes everything else (norms, rotary embeddings, the activation
  function and its gating product, residual adds) from them. A Llama-style layer then keeps about 40% of its
  activations (SmolLM2-135M on HH batches, from peak RSS: about 17 against 42 MB per layer) for 6-12% of the
  step's time: the recomputed ops are elementwise, and torch's dispatch mode adds microseconds to every op.
  This is torch's selective activation checkpointing (``torch.utils.checkpoint.create_selective_checkpoint_contexts``)
  with the op-level policy torchtitan uses: save matmul and attention outputs, recompute the rest.

Both are exact: the recompute runs the same ops on the same values. Both recompute inside per-segment attention's
context (:func:`alignkit.engine.segments.checkpoint_kwargs`), so packed batches keep one row per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from alignkit.engine.segments import checkpoint_kwargs

_aten = torch.ops.aten
# the ops whose outputs a selectively checkpointed layer keeps: matrix products (linear layers lower to mm/addmm,
# eager attention to bmm) and attention kernels; every other op is cheap to rerun from them
KEPT_OPS = frozenset({
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default, _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default, _aten._scaled_dot_product_cudnn_attention.default,
})


def _keep_matmuls_and_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


@contextmanager
def _entered(*contexts: AbstractContextManager) -> Iterator[None]:
    with ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def _selective(recompute_context: Callable) -> Callable:
    """A ``context_fn`` for torch's checkpoint: keep matmul and attention outputs, recompute the rest inside the
    contexts ``recompute_context`` gives (per-segment attention's)."""
    def context_fn():
        keep, replay = create_selective_checkpoint_contexts(_keep_matmuls_and_attention)
        forward_context, recompute = recompute_context()
        return _entered(forward_context, keep), _entered(recompute, replay)
    return context_fn


def enable_activation_checkpointing(model: nn.Module, every_n_layers: int = 1, full: bool = True,
                                    selective: bool = False) -> None:
    """Checkpoint every ``every_n_layers``-th decoder layer fully (if ``full``) and the other layers selectively
    (if ``selective``), non-reentrant (works with frozen inputs, e.g. under LoRA)."""
    if not (full or selective):
        return
    kwargs = checkpoint_kwargs(model)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if not callable(enable):
        raise ValueError(f"activation_checkpointing: {type(model).__name__} does not support it")
    enable(activation_checkpointing_kwargs=kwargs)  # every layer; then each is set to its kind below
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    selective_checkpoint = partial(checkpoint, use_reentrant=False, context_fn=_selective(kwargs["context_fn"]))
    for index, layer in enumerate(layers):
        if full and index % every_n_layers == 0:
            continue  # as enabled: full recompute
        layer.gradient_checkpointing = selective
        if selective:
            layer._gradient_checkpointing_func = selective_checkpoint
