"""Shared-prefix and packed layouts give the padded path's log-probs; token-budget batches; layout fall-back."""

from __future__ import annotations

import pytest
import torch

from alignkit.engine.exactness import layout_support, probe_support
from alignkit.engine.layouts import build_groups, collate, static_support
from alignkit.engine.logprobs import sequence_logps
from alignkit.models import tiny_llama
from alignkit.train.batching import micro_batches, token_budget_batches, token_budget_order
from alignkit.train.config import load_config
from alignkit.train.methods import BatchContext, PreferenceMethod
from alignkit.train.reference import FrozenCopyReference

# prompts and responses of different lengths; N = 3, 2, 2, 1 responses (one of them a single token)
GROUPS = [
    ([1, 5, 6, 7], [[8, 9, 2], [10, 11, 12, 13, 2], [3]]),
    ([1, 5], [[10, 11, 12, 13, 2], [14, 2]]),
    ([1, 30, 31, 32, 33, 34, 35, 36, 37], [[2], [*range(40, 53), 2]]),
    ([1, 50, 51], [[52, 53, 54, 55, 56, 57, 2]]),
]
IMPLEMENTATIONS = ["sdpa", "eager"]


def padded_reference(model, groups, pad_id, score_prompt=False):
    rows = [(prompt, response) for prompt, responses in groups for response in responses]
    return sequence_logps(model, collate(rows, pad_id, score_prompt))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("score_prompt", [False, True])
@pytest.mark.parametrize("pack", [False, True])
def test_shared_prefix_and_packed_equal_padded(tokenizer, implementation, score_prompt, pack):
    model = tiny_llama(tokenizer)
    model.set_attn_implementation(implementation)
    pad = tokenizer.pad_token_id
    expected = padded_reference(model, GROUPS, pad, score_prompt)
    batch = build_groups(GROUPS, pad, score_prompt, pack=pack)
    out = sequence_logps(model, batch, chunk_size=4)
    assert batch.num_sequences == 8
    torch.testing.assert_close(out.logps, expected.logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.tokens, expected.tokens, atol=0, rtol=0)
    torch.testing.assert_close(out.logits_mean, expected.logits_mean, atol=1e-5, rtol=0)
    unique = sum(len(p) + sum(len(r) for r in rs) for p, rs in GROUPS)
    assert batch.num_tokens == unique
    if pack:  # fewer rows, and never longer than the longest group
        assert batch.input_ids.shape[0] == 3 and batch.input_ids.shape[1] == 24


def test_packing_under_a_larger_row_budget_and_gradients_match(tiny_model, tokenizer):
    pad = tokenizer.pad_token_id
    batch = build_groups(GROUPS, pad, pack=True, row_tokens=64)
    assert batch.input_ids.shape[0] == 1 and batch.num_tokens == batch.padded_tokens  # no padding at all
    packed = sequence_logps(tiny_model, batch).logps
    packed.sum().backward()
    packed_grads = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    padded = padded_reference(tiny_model, GROUPS, pad).logps
    padded.sum().backward()
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    for got, want in zip(packed_grads, (p.grad for p in tiny_model.parameters()), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_positions_restart_after_the_prompt_and_responses_do_not_see_each_other(tokenizer):
    batch = build_groups([([1, 2, 3], [[4, 5], [6, 7, 8]])], tokenizer.pad_token_id)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    allowed = batch.allowed()[0]
    assert allowed[5, :3].all() and not allowed[5, 3:5].any() and allowed[5, 5]  # 2nd response: prompt + itself
    assert not allowed[2, 3:].any()  # causal
    # the first token of each response is scored from the last prompt position
    assert batch.score_src.tolist() == [2, 3, 2, 5, 6] and batch.score_target.tolist() == [4, 5, 6, 7, 8]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bf16_autocast_shared_prefix_close_to_padded(tiny_model, tokenizer, implementation):
    tiny_model.set_attn_implementation(implementation)
    pad = tokenizer.pad_token_id
    expected = padded_reference(tiny_model, GROUPS, pad).logps
    got = sequence_logps(tiny_model, build_groups(GROUPS, pad), autocast_dtype=torch.bfloat16).logps
    torch.testing.assert_close(got, expected, atol=0.5, rtol=0.02)


def test_supported_attention_passes_the_checks(tiny_model, tokenizer):
    for implementation in IMPLEMENTATIONS:
        tiny_model.set_attn_implementation(implementation)
        assert layout_support(tiny_model, tokenizer.pad_token_id) is None


def test_unsupported_attention_and_sliding_windows_fall_back(tiny_model, tokenizer):
    tiny_model.config._attn_implementation = "flash_attention_2"  # not installable on CPU; only the name matters
    assert "flash_attention_2" in static_support(tiny_model)
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, sliding_window=8)
    config._attn_implementation = "sdpa"
    assert "sliding" in static_support(MistralForCausalLM(config))


def test_probe_catches_a_model_that_ignores_the_mask(tiny_model, tokenizer, monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def causal_only(module, query, key, value, attention_mask, **kwargs):  # drops any custom mask
        kwargs.pop("is_causal", None)
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    tiny_model.set_attn_implementation("sdpa")
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", causal_only)
    assert static_support(tiny_model) is None
    assert "differ" in probe_support(tiny_model, tokenizer.pad_token_id)


def _pairs(tokenizer, n=6):
    from alignkit.data.tokenize import EncodedPair

    g = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(n):
        prompt = [1] + torch.randint(5, 500, (3 + 2 * i,), generator=g).tolist()
        chosen = torch.randint(5, 500, (2 + i % 3,), generator=g).tolist() + [2]
        rejected = torch.randint(5, 500, (4 - i % 3,), generator=g).tolist() + [2]
        pairs.append(EncodedPair(prompt, chosen, rejected))
    return pairs


@pytest.mark.parametrize("joint", [False, True])
def test_a_dpo_training_step_is_the_same_in_every_layout(tokenizer, monkeypatch, joint):
    """Same loss, metrics and updated weights with padded rows, shared prefix and packed shared prefix;
    ``joint`` also scores prompt tokens (DOVE's joint log-prob), which the shared prefix computes once."""
    import alignkit.train.methods.preference as preference

    if joint:
        monkeypatch.setattr(preference, "JOINT_OBJECTIVES", {"dpo"})
    items = _pairs(tokenizer)
    results = {}
    for name, overrides in {"padded": ["layout=padded"], "shared": ["packing=false"], "packed": []}.items():
        config = load_config(None, ["objectives=[{name: dpo, beta: 0.1}]", *overrides])
        model = tiny_llama(tokenizer)
        reference = FrozenCopyReference(model)
        with torch.no_grad():  # move the policy off the reference so the log-ratios are not all zero
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=1e-2)
        method = PreferenceMethod(config)
        ctx = BatchContext(model, reference, tokenizer.pad_token_id, 1024, None, torch.device("cpu"))
        assert method.layout(ctx) == ("padded" if name == "padded" else "shared_prefix")
        out = method.step(ctx, items, [0, 2, 3, 5], None, {}, training=True)
        out.loss.backward()
        torch.optim.SGD(model.parameters(), lr=1.0).step()
        results[name] = (out, [p.detach().clone() for p in model.parameters()])
    base, base_weights = results["padded"]
    for name in ["shared", "packed"]:
        out, weights = results[name]
        assert out.loss.item() == pytest.approx(base.loss.item(), abs=1e-6)
        for key, value in base.metrics.items():
            assert out.metrics[key] == pytest.approx(value, abs=1e-5), key
        for got, want in zip(weights, base_weights, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert out.num_tokens < base.num_tokens  # the prompt is fed once


def test_unpaired_step_is_the_same_in_both_layouts(tokenizer):
    from alignkit.data.tokenize import EncodedExample

    examples = [EncodedExample(p.prompt, p.chosen if i % 2 else p.rejected, label=bool(i % 2))
                for i, p in enumerate(_pairs(tokenizer))]
    losses = {}
    for name, overrides in {"padded": ["layout=padded"], "shared": ["packing=false"], "packed": []}.items():
        config = load_config(None, ["objectives=[{name: kto}]", *overrides])
        model = tiny_llama(tokenizer)
        reference = FrozenCopyReference(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=1e-2)
        ctx = BatchContext(model, reference, tokenizer.pad_token_id, 1024, None, torch.device("cpu"))
        losses[name] = PreferenceMethod(config).step(ctx, examples, [0, 1, 4, 5], None, {}, training=True).loss
    assert losses["shared"].item() == pytest.approx(losses["padded"].item(), abs=1e-6)
    assert losses["packed"].item() == pytest.approx(losses["padded"].item(), abs=1e-6)


def test_fallback_is_logged_and_exact(tiny_model, tokenizer):
    tiny_model.config._attn_implementation = "flash_attention_2"
    messages = []
    method = PreferenceMethod(load_config(None, []))
    method._log = messages.append
    ctx = BatchContext(tiny_model, None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"))
    assert method.layout(ctx) == "padded" and method.layout(ctx) == "padded"
    assert len(messages) == 1 and "flash_attention_2" in messages[0]  # decided (and logged) once


def test_token_budget_batches_cover_every_example_once():
    lengths = [int(x) for x in torch.randint(5, 300, (500,), generator=torch.Generator().manual_seed(1))]
    batches = token_budget_batches(lengths, max_tokens=1000, seed=3)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(500))
    assert all(sum(lengths[i] for i in batch) <= 1000 or len(batch) == 1 for batch in batches)
    assert token_budget_batches(lengths, 1000, seed=3) == batches  # deterministic
    assert token_budget_batches(lengths, 1000, seed=4) != batches
    # length grouping: batches hold similar lengths, so their spread is far below the data's
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 0.25 * (max(lengths) - min(lengths))
    # an example above the budget still appears, alone
    assert [[0]] == token_budget_batches([50], max_tokens=10)


def test_token_budget_order_resumes_and_reshuffles_each_epoch():
    lengths = list(range(10, 70))
    stream = token_budget_order(lengths, 200, seed=0)
    first = [next(stream) for _ in range(40)]
    resumed = token_budget_order(lengths, 200, seed=0, start=17)
    assert [next(resumed) for _ in range(23)] == first[17:]
    epoch = token_budget_batches(lengths, 200, seed=0)
    assert first[:len(epoch)] == epoch and first[len(epoch):2 * len(epoch)] != epoch


def test_micro_batches_follow_the_config():
    items = _pairs(None, n=12)
    fixed = micro_batches(load_config(None, ["batch_size=4"]), items)
    assert len(next(fixed)) == 4
    budget = micro_batches(load_config(None, ["max_tokens_per_batch=60"]), items)
    assert all(sum(len(items[i].prompt) + len(items[i].chosen) + len(items[i].rejected) for i in next(budget)) <= 60
               for _ in range(5))
