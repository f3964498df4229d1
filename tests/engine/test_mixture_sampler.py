"""The engine's geometric-mixture sampler (IPO-MD, Calandriello et al., ICML 2024) on tiny random Llamas:
greedy endpoints equal each model's own ``generate``, cached logits equal a full recompute, seeded draws
repeat, rows stop at eos and are padded after it. ``sample_pairs`` adapts ``sample_ids`` (two samples per
prompt, one prefill) to padded tensors for the checks."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from alignkit.engine.generation import SamplingParams, geometric_mixture_logits, left_pad, sample_ids
from alignkit.models import load_tokenizer, tiny_llama


def sample_pairs(policy, reference, input_ids, attention_mask, beta, max_new_tokens, temperature=1.0,
                 generator=None, eos_token_id=None, pad_token_id=None, return_logits=False):
    prompt_ids, prompt_mask = left_pad(input_ids, attention_mask)
    prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask, strict=True)]
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                            temperature=temperature if temperature > 0 else 1.0)
    eos = policy.config.eos_token_id if eos_token_id is None else eos_token_id
    pad = 0 if pad_token_id is None else pad_token_id
    out = sample_ids(policy, prompts, params, 2, eos_token_id=eos, pad_token_id=pad, reference=reference,
                     mixture_beta=beta, generator=generator, return_logits=return_logits)
    width = max(len(r) for rs in out.responses for r in rs)
    completions = torch.full((len(prompts), 2, width), pad, dtype=torch.long)
    completion_mask = torch.zeros_like(completions)
    for b, rs in enumerate(out.responses):
        for s, r in enumerate(rs):
            completions[b, s, :len(r)] = torch.tensor(r, dtype=torch.long)
            completion_mask[b, s, :len(r)] = 1
    logits = None
    if return_logits:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # the engine's batch order
        raw = out.step_logits[0].view(len(prompts), 2, -1, out.step_logits[0].shape[-1])
        logits = torch.empty_like(raw)
        logits[torch.tensor(order)] = raw
    return SimpleNamespace(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completions=completions,
                           completion_mask=completion_mask, logits=logits)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(log=lambda *a: None)


def random_lm(tok, seed):
    # A freshly initialised tied model mostly repeats its input token; an untied random head makes
    # greedy paths differ between models, so the β = 0 / β = 1 checks can tell them apart.
    lm = tiny_llama(tok, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    lm.lm_head.weight = nn.Parameter(torch.randn(lm.lm_head.weight.shape, generator=gen) * 0.5)
    return lm.eval()


@pytest.fixture(scope="module")
def models(tok):
    return random_lm(tok, 0), random_lm(tok, 1)


@pytest.fixture(scope="module")
def prompts(tok):
    assert tok.padding_side == "right"  # the sampler must cope with right padding
    return tok(["Hello there, how are", "Hi"], return_tensors="pt", padding=True)


def greedy_generate(model, tok, texts, n):
    tok.padding_side = "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "right"
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[:, enc.input_ids.shape[1]:]


@pytest.mark.parametrize("beta, which", [(0.0, 0), (1.0, 1)])
def test_greedy_endpoints_match_each_model(tok, models, prompts, beta, which):
    n = 5
    out = sample_pairs(*models, prompts.input_ids, prompts.attention_mask, beta=beta, max_new_tokens=n,
                       temperature=0.0)
    expected = greedy_generate(models[which], tok, ["Hello there, how are", "Hi"], n)
    assert torch.equal(out.completions[:, 0], out.completions[:, 1])
    got = out.completions[:, 0, : expected.shape[1]]
    assert torch.equal(got, expected)
    other = greedy_generate(models[1 - which], tok, ["Hello there, how are", "Hi"], n)
    assert not torch.equal(got, other)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_cached_mixture_logits_equal_full_recompute(models, prompts, beta):
    gen = torch.Generator().manual_seed(0)
    out = sample_pairs(*models, prompts.input_ids, prompts.attention_mask, beta=beta, max_new_tokens=4,
                       temperature=1.0, generator=gen, return_logits=True)
    b, _, t = out.completions.shape
    seq = torch.cat([out.prompt_ids.repeat_interleave(2, 0), out.completions.view(b * 2, t)], dim=1)
    mask = torch.cat([out.prompt_mask.repeat_interleave(2, 0), torch.ones(b * 2, t, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = [m(input_ids=seq, attention_mask=mask, position_ids=positions).logits for m in models]
    start = out.prompt_ids.shape[1] - 1
    recomputed = geometric_mixture_logits(full[0], full[1], beta)[:, start:start + t].view(b, 2, t, -1)
    live = out.completion_mask.bool()
    torch.testing.assert_close(out.logits[live], recomputed[live], atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_and_pairs_differ(models, prompts):
    def draw(seed):
        return sample_pairs(*models, prompts.input_ids, prompts.attention_mask, beta=0.5, max_new_tokens=4,
                            generator=torch.Generator().manual_seed(seed)).completions

    first = draw(3)
    assert torch.equal(first, draw(3))
    assert not torch.equal(first[:, 0], first[:, 1])


def test_rows_stop_at_eos_and_pad_after(models, prompts):
    free = sample_pairs(*models, prompts.input_ids, prompts.attention_mask, beta=0.0, max_new_tokens=5,
                        temperature=0.0, eos_token_id=-1)
    row = free.completions[0, 0].tolist()
    eos = row[2]
    assert eos not in row[:2]
    pad = 0
    models[0].train()  # the sampler decodes in eval mode and hands the model back in train mode
    try:
        out = sample_pairs(*models, prompts.input_ids, prompts.attention_mask, beta=0.0, max_new_tokens=5,
                           temperature=0.0, eos_token_id=eos, pad_token_id=pad)
        assert models[0].training and not models[1].training
    finally:
        models[0].eval()
    for b in range(2):
        for s in range(2):
            ref = free.completions[b, s].tolist()
            stop = ref.index(eos) + 1 if eos in ref else len(ref)
            got = out.completions[b, s].tolist()
            assert got[:stop] == ref[:stop]
            assert all(tok_id == pad for tok_id in got[stop:])
            assert out.completion_mask[b, s].tolist() == [1] * stop + [0] * (len(got) - stop)
