"""Online IPO / IPO-MD (METHODS.md §2b): loss by hand, mixture sampler on tiny random Llamas."""

import math

import pytest
import torch
from torch import nn

from alignkit.models import load_tokenizer, tiny_llama
from alignkit.objectives.online import (
    geometric_mixture_logits,
    online_ipo_loss,
    sample_pairs,
    symmetrized_preference,
)

# h(y) = (−4 + 5)/2 = 0.5, h(y') = (−6 + 5)/2 = −0.5; h(y) = (−6 + 5)/3 = −1/3, h(y') = (−3 + 5)/1 = 2.
POLICY_Y, POLICY_Y2 = [-4.0, -6.0], [-6.0, -3.0]
REF_Y, REF_Y2 = [-5.0, -5.0], [-5.0, -5.0]
TOKENS_Y, TOKENS_Y2 = [2.0, 3.0], [2.0, 1.0]
P = [0.8, 0.3]


def ipo(**kwargs):
    t = torch.tensor
    return online_ipo_loss(t(POLICY_Y), t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P),
                           tokens_y=t(TOKENS_Y), tokens_y2=t(TOKENS_Y2), **kwargs)


def test_soft_and_hard_targets():
    # τ = 0.1: soft targets (p − ½)/τ = [3, −2]; hard targets ±5.
    soft = ipo(tau=0.1)
    assert soft.loss.tolist() == pytest.approx([(1.0 - 3.0) ** 2, (-1 / 3 - 2 - (-2.0)) ** 2], rel=1e-5)
    assert soft.metrics["target"].item() == pytest.approx(0.5)
    assert soft.metrics["delta"].item() == pytest.approx((1.0 + (-1 / 3 - 2)) / 2, rel=1e-5)
    assert soft.metrics["rewards/probabilities"].item() == pytest.approx(0.55)
    hard = ipo(tau=0.1, hard_labels=True)
    assert hard.loss.tolist() == pytest.approx([(1.0 - 5.0) ** 2, (-7 / 3 + 5.0) ** 2], rel=1e-5)


def test_length_normalisation_switch():
    t = torch.tensor
    raw = online_ipo_loss(t(POLICY_Y), t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P), tau=0.5, length_normalize=False)
    # Unnormalised: Δ = [1 − (−1), −1 − 2] = [2, −3]; targets (p − ½)/0.5 = [0.6, −0.4].
    assert raw.loss.tolist() == pytest.approx([(2 - 0.6) ** 2, (-3 + 0.4) ** 2], rel=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        online_ipo_loss(t(POLICY_Y), t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P))


def test_gradient_and_extremes():
    policy_y = torch.tensor(POLICY_Y, requires_grad=True)
    t = torch.tensor
    out = online_ipo_loss(policy_y, t(POLICY_Y2), t(REF_Y), t(REF_Y2), t(P), tau=0.1,
                          tokens_y=t(TOKENS_Y), tokens_y2=t(TOKENS_Y2))
    out.loss.sum().backward()
    # d/d log π(y) of (Δ − target)² = 2(Δ − target)/|y|
    assert policy_y.grad.tolist() == pytest.approx([2 * (1 - 3) / 2, 2 * (-1 / 3) / 3], rel=1e-5)
    big = online_ipo_loss(t([-1e4]), t([0.0]), t([0.0]), t([-1e4]), t([1.0]), tau=1e-3,
                          tokens_y=t([0.0]), tokens_y2=t([1.0]))
    assert torch.isfinite(big.loss).all()


def test_symmetrized_preference_and_mixture():
    assert symmetrized_preference(torch.tensor([0.8]), torch.tensor([0.4])).item() == pytest.approx(0.7)
    policy, ref, beta = [0.1, 1.0, -2.0], [2.0, 0.0, 0.5], 0.3
    mixed = geometric_mixture_logits(torch.tensor(policy), torch.tensor(ref), beta).softmax(-1)
    p = [math.exp(x) / sum(math.exp(v) for v in policy) for x in policy]
    q = [math.exp(x) / sum(math.exp(v) for v in ref) for x in ref]
    unnorm = [pi ** (1 - beta) * qi ** beta for pi, qi in zip(p, q, strict=True)]
    assert mixed.tolist() == pytest.approx([u / sum(unnorm) for u in unnorm], rel=1e-5)


# ---------------------------------------------------------------------------------------------- sampler


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
