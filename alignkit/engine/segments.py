"""Attention that skips what the shared-prefix / packed mask hides: per-segment SDPA calls.

A row of the shared-prefix layout is ``[prompt | r1 | r2 | ...]`` (several such groups when packed). The
dense 4-D mask makes attention compute every query against every key of the row and throw most of the
scores away: the upper triangle, the other groups of a packed row, and response k against response j.
Here each group is computed with the calls that need no mask but causality:

* ``[prompt | r1]`` is an ordinary causal sequence: one ``is_causal`` SDPA call;
* response k >= 2 attends to the prompt and causally to itself: one call with queries ``rk`` and keys
  ``[prompt | rk]`` and a small ``[len(rk), len(prompt) + len(rk)]`` mask;
* padding at the end of a row attends to nothing; its outputs are zeros (never scored, never seen).

The result equals the dense-mask attention up to float reordering (the exactness probe checks it per
model, :func:`alignkit.engine.exactness.segment_support`). The work is ``(p + n1)^2 / 2 + sum_k nk (p + nk)``
scores per group instead of ``L^2`` per row. This is what the prefix-sharing paper (Wang & Hegde 2024,
"Accelerating Direct Preference Optimization with Prefix Sharing", arXiv 2410.20305) does with FlexAttention
block masks; torch's FlexAttention has no backward on CPU, and SDPA's own kernels skip the causal upper
triangle, so per-segment SDPA calls work on every device.

The function is registered in transformers' ``AttentionInterface`` and selected only inside
:func:`segment_attention` (a context manager around one forward), which hands the plan to every layer as a
keyword argument; models whose layers do not forward keyword arguments to the attention function fail the
probe and keep the dense mask.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.functional import scaled_dot_product_attention

NAME = "alignkit_segments"
Call = tuple[int, int, int, int]  # query start, query end, prefix start, prefix end (prefix empty: causal)


@dataclass
class SegmentPlan:
    """Per row, the SDPA calls that cover its real tokens in order; ``width`` is the row length."""

    rows: list[list[Call]]
    width: int
    _masks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_spans(cls, spans: Sequence[Sequence[tuple[int, int, Sequence[int]]]], width: int) -> SegmentPlan:
        """``spans[row]`` lists the row's groups as (start, prompt length, response lengths)."""
        rows = []
        for groups in spans:
            calls: list[Call] = []
            for start, prompt_len, lengths in groups:
                first_end = start + prompt_len + (lengths[0] if lengths else 0)
                calls.append((start, first_end, start, start))
                cursor = first_end
                for n in lengths[1:]:
                    calls.append((cursor, cursor + n, start, start + prompt_len))
                    cursor += n
            rows.append(calls)
        return cls(rows, width)

    def mask(self, prefix: int, length: int, device: torch.device) -> Tensor:
        """[length, prefix + length] bool: the whole prefix, then causal over the segment itself."""
        key = (prefix, length, device)
        if key not in self._masks:
            own = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            self._masks[key] = torch.cat([torch.ones(length, prefix, dtype=torch.bool, device=device), own], 1)
        return self._masks[key]


def _sdpa(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, dropout: float,
          scaling: float | None) -> Tensor:
    gqa = query.shape[1] != key.shape[1]
    return scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None,
                                        dropout_p=dropout, scale=scaling, enable_gqa=gqa)


def segment_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                              segment_plan: SegmentPlan | None = None, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention-function signature: query [B, H, T, D], keys/values [B, Hkv, T, D];
    returns [B, T, H, D]. Without a plan (generation, padded rows) it is plain SDPA."""
    if segment_plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # Split, never narrow, the operands: a narrow's backward zero-fills a tensor of the whole operand's size and
    # autograd sums those, one per segment (40 per layer for 4 HH pairs); a split's backward is one concatenation.
    per_row = [(query, key, value)] if query.shape[0] == 1 else zip(*(t.split(1) for t in (query, key, value)),
                                                                    strict=True)
    rows = []
    for calls, (query_r, key_r, value_r) in zip(segment_plan.rows, per_row, strict=True):
        used = calls[-1][1] if calls else 0
        sizes = [q1 - q0 for q0, q1, _, _ in calls] + ([segment_plan.width - used] if used < segment_plan.width else [])
        queries, keys, values = (t.split(sizes, 2) for t in (query_r, key_r, value_r))
        group_of = {}  # a group's first call [prompt | r1] starts where its prefix starts
        parts = []
        for i, (q0, q1, p0, p1) in enumerate(calls):
            if p0 == p1:
                group_of[q0] = i
                parts.append(_sdpa(queries[i], keys[i], values[i], None, dropout, scaling))
            else:
                first, prefix = group_of[p0], p1 - p0
                k = torch.cat([keys[first].narrow(2, 0, prefix), keys[i]], 2)
                v = torch.cat([values[first].narrow(2, 0, prefix), values[i]], 2)
                parts.append(_sdpa(queries[i], k, v, segment_plan.mask(prefix, q1 - q0, query.device), dropout,
                                   scaling))
        if used < segment_plan.width:
            parts.append(query.new_zeros(1, query.shape[1], segment_plan.width - used, query.shape[3]))
        rows.append(torch.cat(parts, 2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, 0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def placeholder_mask(input_ids: Tensor) -> Tensor:
    """What a forward with a plan hands transformers as its attention mask: transformers wants one, and passes
    a 4-D mask to the layers untouched, but the layers' attention reads the plan. An all-True view of shape
    [R, 1, T, T] that takes no memory, instead of the dense mask (T x T per row, quadratic in the row)."""
    rows, width = input_ids.shape
    return torch.ones((), dtype=torch.bool, device=input_ids.device).expand(rows, 1, width, width)


def _register() -> None:
    """(Re-)register the function under NAME: a dict update, so whatever is current here is what runs."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segment_attention_forward)


def _configs(model: nn.Module) -> list:
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = getattr(base, "config", None)
    if config is None:
        return []
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return [config] if text is config else [config, text]


def _tree_configs(model: nn.Module) -> list:
    """The distinct configurations of ``model`` and every submodule (a sequence classifier built around a causal
    LM's backbone holds a configuration of its own next to the backbone's)."""
    found: dict[int, object] = {}
    for module in model.modules():  # model itself first
        for config in _configs(module):
            found.setdefault(id(config), config)
    return list(found.values())


@contextmanager
def _attention_set_to_segments(configs: list) -> Iterator[None]:
    _register()
    previous = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = NAME
    try:
        yield
    finally:
        for config, value in zip(configs, previous, strict=True):
            config._attn_implementation = value


def segment_attention(model: nn.Module) -> AbstractContextManager[None]:
    """Inside: the model's attention layers use :func:`segment_attention_forward` (sdpa models only)."""
    return _attention_set_to_segments(_configs(model))


def checkpoint_kwargs(model: nn.Module) -> dict:
    """Keyword arguments for ``torch.utils.checkpoint`` (transformers' ``activation_checkpointing_kwargs``) under
    which checkpointed layers of ``model`` may run attention per segment: non-reentrant, with the backward's
    recompute inside per-segment attention's context (torch's ``context_fn``) for every configuration in the
    model, so a layer called with a plan recomputes with that plan, and one called without (generation, padded
    rows) with plain SDPA, as it ran."""
    configs = _tree_configs(getattr(model, "module", model))
    for config in configs:
        _RECOMPUTES_IN_SEGMENTS[id(config)] = weakref.ref(config)
    return {"use_reentrant": False, "context_fn": lambda: (nullcontext(), _attention_set_to_segments(configs))}


def recomputes_in_segments(model: nn.Module) -> bool:
    """Whether ``model``'s checkpointing was enabled with :func:`checkpoint_kwargs` (else its recompute would
    run plain SDPA on the placeholder mask, so per-segment attention must not be used)."""
    config = _config(model)
    entry = _RECOMPUTES_IN_SEGMENTS.get(id(config)) if config is not None else None
    return entry is not None and entry() is config


# ---------------------------------------------------------------- which models use it

_RECOMPUTES_IN_SEGMENTS: dict[int, weakref.ref] = {}  # id(config) -> config, see checkpoint_kwargs

_PROBED: dict[int, tuple[weakref.ref, str | None]] = {}  # id(config) -> (config, reason it is not used or None)


def _config(model: nn.Module):
    configs = _configs(getattr(model, "module", model))  # DDP wraps the model in .module
    return configs[0] if configs else None


def remember(model: nn.Module, reason: str | None) -> None:
    """Record the probe's verdict for ``model`` (and every module sharing its configuration: the causal LM,
    its decoder, a LoRA wrapper)."""
    config = _config(model)
    if config is not None:
        _PROBED[id(config)] = (weakref.ref(config), reason)


@torch.no_grad()
def probe(model: nn.Module) -> str | None:
    """Run a packed probe row (two groups, three and two responses) through ``model`` with the dense mask and
    per segment; None when the outputs at every real position agree to float noise, else why not."""
    from alignkit.engine.layouts import attention_implementation, build_groups, probe_group

    if attention_implementation(model) != "sdpa":
        return f"attention implementation {attention_implementation(model)!r} is not sdpa"
    parameter = next(model.parameters())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    prompt, responses = probe_group(getattr(embeddings, "num_embeddings", None) or 1024)
    batch = build_groups([(prompt, responses), (prompt[:5], responses[1:])], 0, pack=True).to(parameter.device)
    plan = SegmentPlan.from_spans(batch.spans, batch.input_ids.shape[1])
    real = batch.segment >= 0
    was_training = model.training
    model.eval()
    try:
        outputs = []
        for current in (None, plan):
            context, extra = forward_context(model, current)
            mask = batch.attention_mask("sdpa") if current is None else placeholder_mask(batch.input_ids)
            with context:
                out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                            use_cache=False, **extra)
            outputs.append((out.logits if hasattr(out, "logits") else out.last_hidden_state)[real].float())
    except Exception as error:  # noqa: BLE001 - any failure means "not used", with the reason kept
        return f"the model rejected per-segment attention ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    gap = float((outputs[0] - outputs[1]).abs().max())
    allowed = (1e-4 if parameter.dtype == torch.float32 else 2e-2) * max(1.0, float(outputs[0].abs().max()))
    if not gap <= allowed:
        return f"per-segment outputs differ from the dense mask's by {gap:.3g} on a probe (> {allowed:.3g})"
    return None


def not_used_because(model: nn.Module) -> str | None:
    """None when packed forwards of ``model`` run per segment, else why they use the dense mask. The first
    call per model configuration runs :func:`probe` and remembers the verdict."""
    if os.environ.get("ALIGNKIT_ATTENTION", "auto") == "dense":
        return "ALIGNKIT_ATTENTION=dense"
    config = _config(model)
    if config is None:
        return "the model has no configuration"
    entry = _PROBED.get(id(config))
    if entry is None or entry[0]() is not config:
        remember(model, probe(model))
        entry = _PROBED[id(config)]
    return entry[1]


def forward_context(model: nn.Module, plan: SegmentPlan | None) -> tuple[object, dict]:
    """(context manager, extra forward kwargs) for a packed forward: per-segment attention when a plan is
    given, else the dense mask."""
    if plan is None:
        return nullcontext(), {}
    return segment_attention(model), {"segment_plan": plan}
