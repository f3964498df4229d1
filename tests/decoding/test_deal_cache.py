"""DeAL's KV cache across steps: the cached search equals the plain one (which re-reads every prefix) token for
token and score for score, and feeds the model far fewer tokens."""

from __future__ import annotations

import pytest
import torch

from alignkit.decoding import decode
from alignkit.decoding.base import Context, DecodeSettings
from alignkit.decoding.deal import Beam, Cached, Uncached
from alignkit.decoding.strategies import encode_prompts

PROMPTS = ["Name a colour.", "Say hello to the nice people of the world today.", "Hi"]


class VowelReward:
    """The share of vowels in the response: a graded reward, so beams diverge from greedy and reorder."""

    def rewards(self, prompts, responses):
        return torch.tensor([sum(c in "aeiou" for c in r) / (1 + len(r)) for r in responses])

    def preferences(self, prompts, first, second):  # pragma: no cover - interface only
        raise NotImplementedError


SETTINGS = [dict(deal_top_k=3, deal_lookahead=3, deal_beam=2, deal_lambda=5.0, max_new_tokens=8),
            dict(deal_top_k=4, deal_lookahead=0, deal_beam=3, deal_lambda=1.0, max_new_tokens=6),
            dict(deal_top_k=2, deal_lookahead=5, deal_beam=1, deal_lambda=3.0, max_new_tokens=7, stop=("e",)),
            dict(deal_top_k=3, deal_lookahead=2, deal_beam=2, deal_lambda=2.0, max_new_tokens=6,
                 repetition_penalty=1.3, batch_size=2)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_cached_search_equals_the_plain_search(tiny_model, tokenizer, settings):
    cached = decode(tiny_model, tokenizer, PROMPTS, "deal", reward=VowelReward(), log=lambda m: None, **settings)
    plain = decode(tiny_model, tokenizer, PROMPTS, "deal", reward=VowelReward(), deal_cache=False,
                   log=lambda m: None, **settings)
    greedy = decode(tiny_model, tokenizer, PROMPTS, "greedy", max_new_tokens=settings["max_new_tokens"],
                    log=lambda m: None)
    for mine, ref in zip(cached, plain, strict=True):
        assert mine["text"] == ref["text"] and mine["tokens_generated"] == ref["tokens_generated"]
        assert [(c["text"], c["tokens"], c["reward"]) for c in mine["candidates"]] == \
               [(c["text"], c["tokens"], c["reward"]) for c in ref["candidates"]]
        for c, r in zip(mine["candidates"], ref["candidates"], strict=True):
            assert c["logp"] == pytest.approx(r["logp"], abs=1e-4)
            assert c["heuristic"] == pytest.approx(r["heuristic"], abs=1e-4)
    if settings["deal_beam"] > 1:  # the search is not greedy here, so the beams' cache rows really are permuted
        assert [r["text"] for r in cached] != [g["text"] for g in greedy]


def test_rollouts_and_next_token_logps_match_step_by_step(tiny_model, tokenizer):
    """One step by hand on two prompts of different lengths (a left-padded cache): the cached rollouts and the
    candidates' next-token log-probs equal the plain search's after the rows are permuted, and the cache is
    cropped back to prefix + candidate."""
    ctx = Context(tiny_model.eval(), tokenizer, DecodeSettings(deal_lookahead=3, max_new_tokens=10))
    prompts = encode_prompts(ctx, [(p, None) for p in PROMPTS[:2]])
    cached, plain = Cached(ctx, prompts), Uncached(ctx, prompts)
    roots = [(0, Beam([], row=0)), (1, Beam([], row=1))]
    assert torch.allclose(cached.next_logps(roots), plain.next_logps(roots), atol=1e-4)
    first = [(p, Beam([t], row=2 * p + j)) for p in (0, 1) for j, t in enumerate((200, 300 + p))]
    cached.rollouts(first, [0, 0, 1, 1], [0, 0, 0, 0])  # feed the four first tokens, no lookahead
    cached.keep([1, 0, 3])  # prompt 0's beams swapped, prompt 1's second beam only
    beams = [first[1], first[0], first[3]]
    assert torch.allclose(cached.next_logps(beams), plain.next_logps(beams), atol=1e-4)
    second = [(p, Beam(b.ids + [t], row=3 * i + j))
              for i, (p, b) in enumerate(beams) for j, t in enumerate(range(100, 103))]
    parents, budget = [0, 0, 0, 1, 1, 1, 2, 2, 2], [3, 3, 3, 2, 3, 0, 3, 1, 3]
    assert cached.rollouts(second, parents, budget) == plain.rollouts(second, parents, budget)
    assert cached.cache.get_seq_length() == cached.mask.shape[1] == max(map(len, prompts)) + 2
    assert torch.allclose(cached.next_logps(second), plain.next_logps(second), atol=1e-4)


def test_the_cache_feeds_each_token_once(tiny_model, tokenizer):
    """Forwarded tokens: the padded prompts once, then per step one token per candidate plus its lookahead."""
    ctx = Context(tiny_model.eval(), tokenizer, DecodeSettings())
    prompts = encode_prompts(ctx, [(p, None) for p in PROMPTS])
    cached = Cached(ctx, prompts)
    assert cached.forwarded == len(prompts) * max(map(len, prompts))
    fresh = [(1, Beam([5], row=0)), (1, Beam([6], row=1))]
    cached.rollouts(fresh, [1, 1], [4, 4])
    assert cached.forwarded == len(prompts) * max(map(len, prompts)) + 2 + 2 * 3  # the 4th token is not fed
