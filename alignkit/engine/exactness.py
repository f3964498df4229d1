"""When the shared-prefix and packed layouts are exact for a model: a static check of its configuration,
then a numerical probe that compares them with padded rows on a few tokens."""

from __future__ import annotations

import torch
from torch import nn

from alignkit.engine import segments
from alignkit.engine.layouts import build_groups, collate, probe_group, static_support
from alignkit.engine.logprobs import sequence_logps


@torch.no_grad()
def probe_support(model: nn.Module, pad_id: int, rtol: float | None = None, attention: str = "dense") -> str | None:
    """Compare the shared-prefix and padded log-probs of a small group; None when they agree to float
    noise (``rtol`` of the log-prob's size: fp32 reorderings move a sum of ~200 nats by ~1e-4). A mask
    that is ignored or rebuilt, or ignored ``position_ids``, move them by far more (tenths to nats)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rtol = rtol if rtol is not None else (1e-5 if dtype == torch.float32 else 1e-2)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None) or 1024
    group = probe_group(vocab)
    prompt, responses = group
    was_training = model.training
    model.eval()
    try:
        padded = sequence_logps(model, collate([(prompt, r) for r in responses], pad_id).to(device)).logps
        packed = build_groups([group, (group[0][:5], group[1][1:])], pad_id, pack=True, row_tokens=64).to(device)
        shared = sequence_logps(model, packed, attention=attention).logps[:len(responses)]
    except Exception as error:  # noqa: BLE001 - any failure means "not supported", with the reason logged
        what = "a 4-D mask" if attention == "dense" else "per-segment attention"
        return f"the model rejected {what} ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    gap = float((padded - shared).abs().max())
    allowed = rtol * max(1.0, float(padded.abs().max()))
    if not gap <= allowed:
        return f"shared-prefix log-probs differ from padded ones by {gap:.3g} on a probe (> {allowed:.3g})"
    return None


def layout_support(model: nn.Module, pad_id: int) -> str | None:
    """None when shared-prefix/packed layouts are exact for ``model``, else why not. When they are, also
    probes (and remembers) whether their attention can skip masked blocks
    (:func:`alignkit.engine.segments.not_used_because`)."""
    reason = static_support(model) or probe_support(model, pad_id)
    if reason is None:
        segments.not_used_because(model)
    return reason
