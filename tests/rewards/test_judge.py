import pytest
import torch

from alignkit.eval.metrics import win_rate
from alignkit.rewards.judge import JUDGE_INSTRUCTION, LMJudge, compare, judge_pair

# Hidden "true" preference: P(a better than b) depends only on the answers, not their order.
QUALITY = {"great": 0.6, "good": 0.5, "ok": 0.4, "bad": 0.3}


def true_pref(a: str, b: str) -> float:
    qa, qb = QUALITY[a], QUALITY[b]
    return qa / (qa + qb)


class BiasedJudge:
    """Always favours whatever comes first by +0.3 (clipped), and records the order it was asked in."""

    def __init__(self, bias: float = 0.3):
        self.bias = bias
        self.calls: list[tuple[str, str]] = []

    def __call__(self, prompt: str, first: str, second: str) -> float:
        self.calls.append((first, second))
        return min(1.0, max(0.0, true_pref(first, second) + self.bias))


@pytest.mark.parametrize("a,b", [("great", "bad"), ("good", "ok"), ("ok", "ok"), ("bad", "great")])
def test_position_bias_cancels(a, b):
    judge = BiasedJudge()
    p = judge_pair(judge, "q", a, b)
    # Qualities are close enough that P + 0.3 never clips at 1, so the cancellation is exact.
    assert p == pytest.approx(true_pref(a, b))
    assert judge.calls == [(a, b), (b, a)]


def test_biased_judge_alone_prefers_whatever_is_first():
    judge = BiasedJudge()
    assert judge("q", "good", "ok") > 0.5 and judge("q", "ok", "good") > 0.5


def test_compare_outcomes_and_ties():
    judge = BiasedJudge()
    outcomes = compare(judge, ["q"] * 4, ["great", "ok", "good", "bad"], ["bad", "ok", "ok", "good"])
    # great/bad = 0.667 win; ok/ok = 0.5 tie; good/ok = 0.556 win; bad/good = 0.375 loss
    assert outcomes == [1.0, 0.5, 1.0, 0.0]
    # good vs ok is 0.556: a wider tie margin makes it a tie
    assert compare(judge, ["q"], ["good"], ["ok"], tie_margin=0.1) == [0.5]
    assert win_rate(outcomes).estimate == pytest.approx(0.625)
    with pytest.raises(ValueError, match="length"):
        compare(judge, ["q"], ["a", "b"], ["c"])


def test_judge_pair_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probability"):
        judge_pair(lambda p, f, s: 1.5, "q", "a", "b")


@pytest.fixture(scope="module")
def tiny_judge():
    from alignkit.models import load_tokenizer
    from alignkit.models.tiny import tiny_llama

    tok = load_tokenizer()
    return LMJudge(tiny_llama(tok), tok)


def test_lm_judge_returns_probability_and_queries_both_orders(tiny_judge):
    texts: list[str] = []
    original = tiny_judge.build_prompt

    def spy_build(prompt, first, second):
        text = original(prompt, first, second)
        texts.append(text)
        return text

    forwards = []
    handle = tiny_judge.model.register_forward_hook(lambda *args: forwards.append(1))
    tiny_judge.build_prompt = spy_build
    try:
        p_single = tiny_judge("What is 2+2?", "4", "5")
        p = judge_pair(tiny_judge, "What is 2+2?", "It is 4.", "It is 5.")
    finally:
        handle.remove()
        del tiny_judge.build_prompt

    assert 0.0 <= p_single <= 1.0 and 0.0 <= p <= 1.0
    assert len(forwards) == 3
    first, second = texts[1], texts[2]
    assert first.index("It is 4.") < first.index("It is 5.")
    assert second.index("It is 5.") < second.index("It is 4.")
    assert JUDGE_INSTRUCTION in first and first.rstrip().endswith("assistant")


def test_lm_judge_matches_manual_softmax(tiny_judge):
    tok, model = tiny_judge.tokenizer, tiny_judge.model
    text = tiny_judge.build_prompt("q", "x", "y")
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    a, b = tok.encode("A", add_special_tokens=False)[0], tok.encode("B", add_special_tokens=False)[0]
    expected = torch.sigmoid(logits[a] - logits[b]).item()
    assert tiny_judge("q", "x", "y") == pytest.approx(expected, abs=1e-6)
