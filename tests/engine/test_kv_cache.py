"""The reserved KV cache gives the default cache's logits, and the inverse-CDF sampler draws from softmax."""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import DynamicCache

from alignkit.engine.generation import sample_from_logits
from alignkit.engine.kv_cache import ReservedLayer, reserved_cache


def _decode_logits(model, cache, prompt: torch.Tensor, steps: int, repeat: int = 1) -> torch.Tensor:
    """Greedy-decode ``steps`` tokens from ``prompt`` with ``cache``; the logits of every step, [B, steps, V]."""
    ids, mask = prompt, torch.ones_like(prompt)
    positions = torch.arange(prompt.shape[1])[None].expand_as(prompt)
    out = []
    with torch.no_grad():
        for step in range(steps):
            result = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                           logits_to_keep=1)
            cache = result.cache
            logits = result.logits[:, -1]
            if step == 0 and repeat > 1:
                cache.batch_repeat_interleave(repeat)
                logits, mask = logits.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
                positions = positions.repeat_interleave(repeat, 0)
            out.append(logits)
            ids = logits.argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(ids)], 1)
            positions = positions[:, -1:] + 1
    return torch.stack(out, 1)


def test_reserved_cache_gives_the_default_caches_logits(tiny_model):
    tiny_model.eval()
    prompt = torch.randint(3, 200, (2, 7), generator=torch.Generator().manual_seed(0))
    expected = _decode_logits(tiny_model, DynamicCache(config=tiny_model.config), prompt, 9, repeat=3)
    # reserve 2 forces reallocations mid-decode (capacity 7 + 2, then doubled); reserve 16 never reallocates
    for reserve in (2, 16):
        cache = reserved_cache(tiny_model, reserve)
        assert all(isinstance(layer, ReservedLayer) for layer in cache.layers)
        got = _decode_logits(tiny_model, cache, prompt, 9, repeat=3)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_reserved_layer_writes_in_place_and_survives_a_crop():
    layer = ReservedLayer(reserve=4)
    first = torch.randn(1, 2, 3, 5)
    layer.update(first, first + 1)
    buffer = layer._key_buffer
    step = torch.randn(1, 2, 1, 5)
    keys, values = layer.update(step, step + 1)
    assert layer._key_buffer is buffer  # no new allocation while the reserve lasts
    torch.testing.assert_close(keys, torch.cat([first, step], 2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat([first, step], 2) + 1, rtol=0, atol=0)
    layer.crop(-2)  # the inherited crop slices the view; the next update writes after what is left
    other = torch.randn(1, 2, 1, 5)
    keys, _ = layer.update(other, other)
    torch.testing.assert_close(keys, torch.cat([first[:, :, :2], other], 2), rtol=0, atol=0)
    layer.batch_select_indices(torch.tensor([0, 0]))  # re-indexed: a copy, so the next update reallocates
    keys, _ = layer.update(step.expand(2, -1, -1, -1), step.expand(2, -1, -1, -1))
    assert keys.shape == (2, 2, 4, 5)
    torch.testing.assert_close(keys[1, :, :3], torch.cat([first[0, :, :2], other[0]], 1), rtol=0, atol=0)


def test_inverse_cdf_sampler_draws_from_softmax_and_never_from_excluded_tokens():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    scores = probs.log().expand(4000, -1).contiguous()  # log(0) = -inf: excluded
    scores[:, 0] = scores[:, 0] + 2.0  # every row shifted alike: softmax changes in a known way
    expected = torch.softmax(scores[0], -1)
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_from_logits(scores, generator) for _ in range(10)])
    counts = torch.bincount(draws, minlength=5).double()
    assert counts[4] == 0
    share = counts / counts.sum()
    # 40,000 draws: each share within 4 standard errors of its probability
    for p, got in zip(expected.tolist(), share.tolist(), strict=True):
        assert abs(got - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-12) / len(draws))
    again = torch.cat([sample_from_logits(scores, torch.Generator().manual_seed(0)) for _ in range(1)])
    assert torch.equal(again, draws[:4000])  # seeded


def test_inverse_cdf_sampler_never_draws_a_masked_last_token():
    scores = torch.full((1000, 6), float("-inf"))
    scores[:, 2] = 0.0  # one allowed token; the tail of the vocabulary is masked
    assert torch.all(sample_from_logits(scores, torch.Generator().manual_seed(1)) == 2)
