"""Per-segment attention (alignkit.engine.segments): the same log-probs and gradients as the dense 4-D mask
and as padded rows, used only where the probe passed, and the model's attention setting restored."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignkit.engine import segments
from alignkit.engine.exactness import layout_support
from alignkit.engine.layouts import build_groups, collate
from alignkit.engine.logprobs import segment_plan, sequence_logps


def gqa_llama(implementation: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=implementation)
    return LlamaForCausalLM(config).float()


def groups(seed: int = 1):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, 200, (n,), generator=g).tolist()

    return [(ids(7), [ids(5), ids(3)]), (ids(4), [ids(6), ids(2), ids(4)]), (ids(9), [ids(1), ids(5)])]


def test_plan_covers_each_group_with_one_causal_call_then_one_call_per_further_response():
    plan = segments.SegmentPlan.from_spans([[(0, 4, [3, 2]), (9, 2, [1])]], width=14)
    # [prompt|r1] causal; r2 sees the prompt; the second group starts at 9; 12..13 is padding
    assert plan.rows == [[(0, 7, 0, 0), (7, 9, 0, 4), (9, 12, 9, 9)]]
    mask = plan.mask(4, 2, torch.device("cpu"))
    assert mask.tolist() == [[True] * 4 + [True, False], [True] * 4 + [True, True]]


@pytest.mark.parametrize("pack", [False, True])
def test_segment_attention_equals_dense_mask_and_padded_rows(pack):
    model = gqa_llama()
    data = groups()
    padded = sequence_logps(model, collate([(p, r) for p, rs in data for r in rs], 0)).logps
    batch = build_groups(data, 0, pack=pack, row_tokens=40)
    assert segment_plan(model, batch, "segments") is not None
    dense = sequence_logps(model, batch, attention="dense").logps
    split = sequence_logps(model, batch, attention="segments").logps
    torch.testing.assert_close(split, dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(split, padded, atol=1e-5, rtol=0)


def test_segment_attention_gives_the_dense_gradients():
    model = gqa_llama()
    batch = build_groups(groups(2), 0, pack=True, row_tokens=40)
    grads = {}
    for attention in ("dense", "segments"):
        model.zero_grad()
        sequence_logps(model, batch, attention=attention).logps.sum().backward()
        grads[attention] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads["segments"], grads["dense"], atol=1e-4, rtol=1e-4)


def test_attention_setting_is_restored_even_when_the_forward_fails():
    model = gqa_llama()
    with pytest.raises(RuntimeError), segments.segment_attention(model):
        assert model.config._attn_implementation == segments.NAME
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_auto_uses_segments_once_the_probe_passed_and_remembers_the_verdict(monkeypatch):
    monkeypatch.delenv("ALIGNKIT_ATTENTION", raising=False)
    model = gqa_llama()
    batch = build_groups(groups(), 0)
    calls = []
    monkeypatch.setattr(segments, "probe", lambda m: calls.append(m) or None)
    assert segment_plan(model, batch) is not None
    assert segment_plan(model.model, batch) is not None  # the decoder shares the configuration: no new probe
    assert len(calls) == 1
    monkeypatch.setenv("ALIGNKIT_ATTENTION", "dense")
    assert segment_plan(model, batch) is None


def test_the_probe_catches_a_model_whose_layers_drop_the_plan(monkeypatch):
    model = gqa_llama()
    assert segments.probe(model) is None
    original = segments.segment_attention_forward

    def wrong(module, query, key, value, attention_mask, segment_plan=None, **kwargs):
        return original(module, query, key, value, None, **kwargs)  # ignores the plan and the mask: plain causal

    monkeypatch.setattr(segments, "segment_attention_forward", wrong)
    assert "differ" in segments.probe(model)


def test_eager_models_keep_the_dense_mask_with_the_reason():
    model = gqa_llama("eager")
    assert layout_support(model, 0) is None  # the dense mask is exact for eager
    assert "not sdpa" in segments.not_used_because(model)
    assert segment_plan(model, build_groups(groups(), 0)) is None


def test_activation_checkpointing_keeps_the_dense_mask_and_back_propagates():
    """Recomputation in the backward runs outside the per-segment context, so checkpointed models must not
    use it (torch's checkpoint would see a different forward and raise)."""
    model = gqa_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = build_groups(groups(), 0, pack=True, row_tokens=40)
    assert segment_plan(model, batch, "segments") is None
    sequence_logps(model, batch).logps.sum().backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_the_plan_is_built_once_per_batch_and_shared_by_its_forwards(monkeypatch):
    """The policy and reference forwards of one batch (here: two forwards) read the same cached plan, built from
    the batch's spans once, and give the same log-probs as a fresh plan."""
    model = gqa_llama()
    batch = build_groups(groups(), 0, pack=True, row_tokens=40)
    fresh = sequence_logps(model, build_groups(groups(), 0, pack=True, row_tokens=40), attention="segments").logps
    built = []
    from_spans = segments.SegmentPlan.from_spans.__func__
    monkeypatch.setattr(segments.SegmentPlan, "from_spans",
                        classmethod(lambda cls, spans, width: built.append(width) or from_spans(cls, spans, width)))
    first = segment_plan(model, batch, "segments")
    assert segment_plan(model, batch, "segments") is first
    assert first.rows == segments.SegmentPlan.from_spans(batch.spans, batch.input_ids.shape[1]).rows
    built.clear()
    twice = [sequence_logps(model, batch, attention="segments").logps for _ in range(2)]
    assert built == []  # both forwards used the cached plan
    torch.testing.assert_close(twice[0], fresh, atol=0, rtol=0)
    torch.testing.assert_close(twice[1], fresh, atol=0, rtol=0)
    moved = batch.to(torch.device("cpu"))  # a new batch object builds its own
    assert moved.segment_plan() is not first and moved.segment_plan().rows == first.rows


def test_one_row_packing_has_no_padding_and_equals_padded_rows_in_value_and_gradient():
    """``row_tokens="all"``: every group in one row (no padding position at all), the same log-probs and
    gradients as padded rows within 1e-5; the dense 4-D mask is never built (the layers read the plan)."""
    model = gqa_llama()
    data = groups(3)
    batch = build_groups(data, 0, pack=True, row_tokens="all")
    assert batch.input_ids.shape == (1, sum(len(p) + sum(map(len, rs)) for p, rs in data))
    assert bool((batch.segment >= 0).all())
    built = []
    original = type(batch).attention_mask
    batch.attention_mask = lambda *a, **k: built.append(a) or original(batch, *a, **k)
    grads = {}
    for name in ("padded", "one_row"):
        model.zero_grad()
        rows = collate([(p, r) for p, rs in data for r in rs], 0) if name == "padded" else batch
        out = sequence_logps(model, rows, attention="segments" if name == "one_row" else "auto").logps
        out.sum().backward()
        grads[name] = (out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert built == []
    torch.testing.assert_close(grads["one_row"][0], grads["padded"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads["one_row"][1], grads["padded"][1], atol=1e-5, rtol=0)


def test_packing_capacity_is_one_row_only_where_attention_runs_per_segment(monkeypatch):
    """One row per batch needs per-segment attention (a dense mask grows with the square of the row):
    a configured capacity wins, checkpointed, eager or ``ALIGNKIT_ATTENTION=dense`` models keep the longest
    group."""
    from alignkit.engine.logprobs import packing_capacity

    assert packing_capacity(gqa_llama()) == "all"
    assert packing_capacity(gqa_llama(), 64) == 64
    assert packing_capacity(gqa_llama("eager")) is None
    checkpointed = gqa_llama()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert packing_capacity(checkpointed) is None
    monkeypatch.setenv("ALIGNKIT_ATTENTION", "dense")
    assert packing_capacity(gqa_llama()) is None


@pytest.mark.parametrize("every", [1, 2])
def test_checkpointing_enabled_by_the_loop_recomputes_per_segment_with_the_dense_gradients(every):
    """The loop's checkpointing (recompute inside the per-segment context) keeps the plan, and one row per
    batch, and its gradients equal those of the dense mask without checkpointing; checkpointing enabled any
    other way keeps the dense mask (its recompute would run plain SDPA on the placeholder mask)."""
    from alignkit.engine.logprobs import packing_capacity
    from alignkit.train.recompute import enable_activation_checkpointing

    batch = build_groups(groups(4), 0, pack=True, row_tokens="all")
    grads = {}
    for name in ("dense", "checkpointed"):
        model = gqa_llama()
        model.train()
        if name == "checkpointed":
            enable_activation_checkpointing(model, every_n_layers=every)
            assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, every == 1]
            assert packing_capacity(model) == "all" and segment_plan(model, batch) is not None
        out = sequence_logps(model, batch, attention="auto" if name == "checkpointed" else "dense").logps
        out.sum().backward()
        grads[name] = (out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads["checkpointed"][0], grads["dense"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads["checkpointed"][1], grads["dense"][1], atol=1e-5, rtol=0)


def test_the_backward_fills_no_tensor_the_size_of_the_whole_row():
    """Each operand is split into segments, not narrowed: a narrow's backward writes a zero-filled tensor as wide as
    the row, one per segment per layer, and autograd sums them (seconds per step on SmolLM2)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class WidestSliceBackward(TorchDispatchMode):
        widest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.slice_backward.default and out.dim() == 4 and args[2] == 2:  # along tokens
                self.widest = max(self.widest, out.shape[2])
            return out

    model = gqa_llama()
    batch = build_groups(groups(2), 0, pack=True, row_tokens=40)
    width = batch.input_ids.shape[1]
    loss = sequence_logps(model, batch, attention="segments").logps.sum()
    with WidestSliceBackward() as seen:
        loss.backward()
    assert 0 < seen.widest < width / 2  # only a group's own prompt keys, for its second and later responses
