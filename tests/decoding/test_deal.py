"""DeAL on a tiny random model: a reward that prefers a known token makes DeAL emit it; λ = 0, b = 1 is
greedy; the lookahead lets the reward see past the candidate token."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.tokenize import PromptEncoder
from alignkit.decoding import decode
from alignkit.engine.generation import generate

PROMPT = "Name a colour."


class PrefixReward:
    """1 when the response starts with ``word``, else 0."""

    def __init__(self, word: str):
        self.word = word

    def rewards(self, prompts, responses):
        return torch.tensor([1.0 if r.startswith(self.word) else 0.0 for r in responses])

    def preferences(self, prompts, first, second):  # pragma: no cover - interface only
        raise NotImplementedError


class TwiceReward(PrefixReward):
    """1 when ``word`` occurs at least twice in the response."""

    def rewards(self, prompts, responses):
        return torch.tensor([1.0 if r.count(self.word) >= 2 else 0.0 for r in responses])


def ranked_first_tokens(model, tokenizer, k: int) -> list[int]:
    ids = torch.tensor([PromptEncoder(tokenizer).encode_prompt(PROMPT)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return logits.topk(k).indices.tolist()


def test_a_reward_preferring_a_known_token_makes_deal_emit_it(tiny_model, tokenizer):
    greedy = generate(tiny_model, tokenizer, [PROMPT], max_new_tokens=6)[0]
    ranked = ranked_first_tokens(tiny_model, tokenizer, 4)
    words = [tokenizer.decode([t]).strip() for t in ranked]
    # the best-ranked candidate (not the argmax) whose text is distinctive
    target = next(w for w in words[1:] if w and w.isalpha() and not greedy.startswith(w)
                  and sum(x.startswith(w) for x in words) == 1)
    rows = decode(tiny_model, tokenizer, [PROMPT], "deal", reward=PrefixReward(target), deal_top_k=4,
                  deal_lookahead=2, deal_lambda=100.0, deal_beam=2, max_new_tokens=6, log=lambda m: None)
    assert rows[0]["text"].startswith(target) and not greedy.startswith(target)
    assert rows[0]["candidates"][0]["reward"] == 1.0
    assert rows[0]["settings"] == {"deal_top_k": 4, "deal_lookahead": 2, "deal_lambda": 100.0, "deal_beam": 2,
                                   "max_new_tokens": 6, "stop": []}


def test_lambda_zero_beam_one_is_greedy(tiny_model, tokenizer):
    greedy = generate(tiny_model, tokenizer, [PROMPT, "Say hello."], max_new_tokens=5)
    rows = decode(tiny_model, tokenizer, [PROMPT, "Say hello."], "deal", reward=PrefixReward("zzz"), deal_top_k=3,
                  deal_lookahead=2, deal_lambda=0.0, deal_beam=1, max_new_tokens=5, log=lambda m: None)
    assert [r["text"] for r in rows] == greedy


def test_lookahead_lets_the_reward_see_beyond_the_candidate(tiny_model, tokenizer):
    """The reward needs a non-argmax token twice, which no single candidate token gives: without lookahead
    every candidate scores 0 and DeAL stays greedy; with it the rollout shows the repeat and DeAL takes it."""
    greedy = generate(tiny_model, tokenizer, [PROMPT], max_new_tokens=4)[0]
    prompt_ids = PromptEncoder(tokenizer).encode_prompt(PROMPT)
    word = None
    for first in ranked_first_tokens(tiny_model, tokenizer, 3)[1:]:
        ids = torch.tensor([prompt_ids + [first]])
        rollout = tiny_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                      do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        text = tokenizer.decode([first])
        if text.strip().isalpha() and text.strip() not in greedy and text.strip() in tokenizer.decode(rollout):
            word = text.strip()
            break
    if word is None:
        pytest.skip("no non-argmax first token whose greedy rollout repeats it")
    settings = dict(deal_top_k=3, deal_lambda=100.0, deal_beam=1, max_new_tokens=4, log=lambda m: None)
    blind = decode(tiny_model, tokenizer, [PROMPT], "deal", reward=TwiceReward(word), deal_lookahead=0, **settings)
    seeing = decode(tiny_model, tokenizer, [PROMPT], "deal", reward=TwiceReward(word), deal_lookahead=3, **settings)
    assert blind[0]["text"] == greedy
    assert seeing[0]["text"].startswith(word) and seeing[0]["text"].count(word) >= 2


def test_deal_refuses_a_judge(tiny_model, tokenizer):
    class Judge:
        def preferences(self, prompts, first, second):  # pragma: no cover - never called
            return torch.full((len(first),), 0.5)

    with pytest.raises(ValueError, match="judge only compares"):
        decode(tiny_model, tokenizer, [PROMPT], "deal", reward=Judge(), max_new_tokens=2, log=lambda m: None)
