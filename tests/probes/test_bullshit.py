"""The Bullshit Index (Liang et al.): r_pb against hand-worked numbers, truthful/independent synthetic models,
the zero-variance convention, the judge-rated types, and the real belief query on tiny_llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignkit.probes import bullshit
from alignkit.probes.base import ProbeContext
from alignkit.probes.bullshit import bullshit_index, parse_claim
from alignkit.probes.correlations import point_biserial


def test_point_biserial_hand_worked():
    # means 0.85 and 0.15, population std sqrt(0.125), sqrt(n1 n0 / n^2) = 0.5 -> 0.7 / 0.35355 * 0.5
    r = point_biserial([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    assert r == pytest.approx(0.7 / np.sqrt(0.125) * 0.5)
    assert r == pytest.approx(np.corrcoef([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])[0, 1])
    assert bullshit_index([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])["bi"] == pytest.approx(1 - r)


def test_truthful_liar_and_independent_models():
    rng = np.random.default_rng(0)
    beliefs = rng.integers(0, 2, 400).astype(float)
    assert bullshit_index(beliefs, beliefs.astype(int))["bi"] == pytest.approx(0.0, abs=1e-12)  # truthful
    liar = bullshit_index(beliefs, 1 - beliefs.astype(int))
    assert liar["bi"] == pytest.approx(0.0, abs=1e-12) and liar["r_pb"] == pytest.approx(-1.0)
    independent = bullshit_index(rng.uniform(size=5000), rng.integers(0, 2, 5000))
    assert independent["bi"] > 0.95


def test_zero_variance_is_reported_as_bi_one():
    constant_claims = bullshit_index([0.1, 0.5, 0.9], [1, 1, 1])
    assert (constant_claims["r_pb"], constant_claims["bi"]) == (0.0, 1.0)
    assert constant_claims["degenerate"] == "every claim is the same"
    assert bullshit_index([0.5, 0.5], [0, 1])["degenerate"] == "every belief is the same"
    assert bullshit_index([0.2, 0.9], [0, 1])["degenerate"] is None


def test_parse_claim():
    assert parse_claim("Yes, absolutely!") == 1
    assert parse_claim("Well... no, it does not.") == 0
    assert parse_claim("No.", asserts="no") == 1
    assert parse_claim("It is a great product.") is None
    assert parse_claim("Not knowing is fine") is None  # "no" must be a whole word


class YesIfAmazing:
    """Stub judge: answers yes to every criterion when the reply says 'amazing'."""

    def yes_probability(self, question: str) -> float:
        reply = question.split("Reply: ")[1]
        return 0.9 if "amazing" in reply else 0.1


def _scripted(monkeypatch, beliefs, replies):
    monkeypatch.setattr(bullshit, "elicit_beliefs", lambda ctx, items: np.asarray(beliefs, dtype=float))
    monkeypatch.setattr(bullshit, "elicit_replies", lambda ctx, items: list(replies))


def _items(n):
    return [{"id": str(i), "statement": f"s{i}", "question": f"q{i}?"} for i in range(n)]


def test_suite_truthful_model_scores_zero_and_types_need_a_judge(monkeypatch):
    beliefs = [1.0, 0.0, 1.0, 0.0, 1.0]
    _scripted(monkeypatch, beliefs, ["Yes.", "No.", "Yes, amazing!", "No way.", "Hmm, maybe."])
    result = bullshit.run_bullshit(ProbeContext(None, None, options={"bootstrap": 0}), _items(5))
    s = result.summary
    assert s["bi"] == 0.0 and s["n_scored"] == 4 and s["unparseable_rate"] == pytest.approx(0.2)
    assert s["types"] is None and "no judge" in s["types_note"]
    assert result.rows[4]["claim"] is None
    judged = bullshit.run_bullshit(ProbeContext(None, None, judge=YesIfAmazing(), options={"bootstrap": 0}),
                                   _items(5)).summary
    assert judged["types"]["paltering"]["rate"] == pytest.approx(0.2)
    assert judged["types"]["empty_rhetoric"]["mean_p_yes"] == pytest.approx((0.9 + 4 * 0.1) / 5)


def test_suite_independent_model_scores_about_one(monkeypatch):
    rng = np.random.default_rng(1)
    beliefs = rng.uniform(size=600)
    _scripted(monkeypatch, beliefs, ["Yes" if c else "No" for c in rng.integers(0, 2, 600)])
    s = bullshit.run_bullshit(ProbeContext(None, None, options={"bootstrap": 200}), _items(600)).summary
    assert s["bi"] > 0.9 and s["bi_ci95"][0] <= s["bi"] <= s["bi_ci95"][1]


def test_claim_judge_needs_a_judge():
    with pytest.raises(ValueError, match="judge"):
        bullshit.run_bullshit(ProbeContext(None, None, options={"claim": "judge"}), _items(2))


def test_belief_is_the_true_share_of_the_next_token_distribution(tokenizer, tiny_model):
    from alignkit.probes.lm_queries import encode_prompts

    items = [{"id": "x", "context": "The sky is green.", "statement": "The sky is blue.", "question": "?"}]
    ctx = ProbeContext(tiny_model, tokenizer)
    belief = bullshit.elicit_beliefs(ctx, items)[0]
    prompt = bullshit.BELIEF_TEMPLATE.format(context="The sky is green.\n\n", statement="The sky is blue.")
    ids = encode_prompts(tokenizer, [prompt])[0]
    with torch.no_grad():
        probs = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)

    def mass(words):
        return sum(probs[t] for t in {tokenizer.encode(p + w, add_special_tokens=False)[0] for w in words
                                      for p in ("", " ")})
    p_true, p_false = mass(["true", "True", "TRUE"]), mass(["false", "False", "FALSE"])
    assert belief == pytest.approx(float(p_true / (p_true + p_false)), rel=1e-4)
