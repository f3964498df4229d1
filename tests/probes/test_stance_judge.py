"""PCT open-ended answers read by a judge (stub judge, and the LM path on tiny_llama)."""

from __future__ import annotations

import pytest
import torch

from alignkit.probes import battery as battery_module
from alignkit.probes.base import ProbeContext
from alignkit.probes.battery import Answer
from alignkit.probes.lm_queries import choice_probabilities, encode_prompts
from alignkit.probes.scales import PCT_SCALE, pct_suite
from alignkit.probes.stance import NO_STANCE, classify_stance

REPLIES = {"s1": "I fully agree with it, without reservation.",  # parser: Agree; judge: Strongly agree
           "s2": "That is nonsense.",  # parser: nothing; judge: Strongly disagree
           "s3": "I cannot answer that."}  # neither


class KeywordJudge:
    """Stub judge: reads the reply between the quotes after 'Reply:' and picks a scale point by keyword."""

    def __init__(self):
        self.asked = 0

    def choice_probabilities(self, question, options):
        self.asked += 1
        assert options[-1] == NO_STANCE and sorted(options[:-1]) == sorted(PCT_SCALE)
        reply = question.split('Reply: "')[1].split('"')[0]
        pick = "Strongly agree" if "fully agree" in reply else "Strongly disagree" if "nonsense" in reply else NO_STANCE
        # a letter bias: the first option shown gets 0.1 more, whatever it is
        return [(0.6 if text == pick else 0.1) + (0.1 if i == 0 else 0.0) for i, text in enumerate(options)]


def _replies(ctx, questions, system, opts, advance):
    return [_parsed(q) for q in questions]


def _parsed(q):
    from alignkit.probes.answers import parse_answer

    reply = REPLIES[q.text.split('"')[1]]
    parsed = parse_answer(reply, q.shown, q.variant.label_list())
    original = q.variant.order[parsed.index] if parsed.index is not None else None
    return Answer(original, parsed.index, response=reply, how=parsed.how)


ITEMS = [{"id": "e1", "statement": "s1", "axis": "economic", "polarity": 1},
         {"id": "e2", "statement": "s2", "axis": "economic", "polarity": -1},
         {"id": "x1", "statement": "s3", "axis": "social", "polarity": 1}]


def test_judge_mode_next_to_the_parser(monkeypatch):
    monkeypatch.setitem(battery_module.ANSWERERS, "generate", _replies)
    judge = KeywordJudge()
    ctx = ProbeContext(None, None, judge=judge, options={"modes": "generate", "judge_stance": True})
    result = pct_suite(ctx, ITEMS)
    s = result.summary
    n = s["n_variants"]
    assert n == 16 and judge.asked == 2 * 3 * n  # both scale orders
    # parser: e1 Agree (+1 of 2) -> economic 5, e2 and x1 unread; judge: e1 +2, e2 -1 x -2 = +2 of 4 -> 10
    assert s["compass"]["generate"][0]["modal"] == {"economic": pytest.approx(5.0), "social": None}
    assert s["compass"]["judge"][0]["modal"] == {"economic": pytest.approx(10.0), "social": None}
    assert s["modes"]["generate"]["unparseable_rate"] == pytest.approx(2 / 3)
    assert s["modes"]["judge"]["unparseable_rate"] == pytest.approx(1 / 3)  # "no stance" is counted, not guessed
    assert s["stance_agreement"] == {"replies": 3 * n, "both_read": n, "agreement_where_both_read": 0.0,
                                     "parser_only": 0, "judge_only": n, "neither": n}
    judged = [r for r in result.rows if r["mode"] == "judge" and r["id"] == "e1"]
    # the judge's answer is an original scale index; its position follows the presented order
    assert all(r["answer"] == 3 and r["position"] == r["order"].index(3) for r in judged)
    # Strongly disagree gets the bias in the forward order, Strongly agree in the reversed one:
    # averaged (0.15, 0.1, 0.1, 0.65) of on-scale mass 1.0
    assert judged[0]["probs"] == pytest.approx([0.15, 0.1, 0.1, 0.65], abs=1e-6)  # rounded in items.jsonl


def test_judge_stance_fails_before_asking_without_a_judge(monkeypatch):
    def never(*args):
        raise AssertionError("the model must not be asked")

    monkeypatch.setitem(battery_module.ANSWERERS, "generate", never)
    with pytest.raises(ValueError, match="--judge"):
        pct_suite(ProbeContext(None, None, options={"judge_stance": True}), ITEMS)
    with pytest.raises(ValueError, match="generate"):
        pct_suite(ProbeContext(None, None, judge=KeywordJudge(), options={"judge_stance": True,
                                                                          "modes": "likelihood"}), ITEMS)


def test_empty_reply_is_not_sent_to_the_judge():
    judge = KeywordJudge()
    assert classify_stance(judge, "s", "  ", PCT_SCALE) == (None, None) and judge.asked == 0


def test_lm_judge_reads_the_letter_distribution(tokenizer, tiny_model):
    """The LM path: P(option) = next-token mass of its letter (with and without a leading space),
    renormalised over the letters."""
    class Judge:
        model, tokenizer = tiny_model, None

    judge = Judge()
    judge.tokenizer = tokenizer
    options = ["red", "green", "blue"]
    got = choice_probabilities(judge, "Which colour?", options)
    prompt = "Which colour?\n\nA. red\nB. green\nC. blue\n\nAnswer with one letter."
    ids = encode_prompts(tokenizer, [prompt])[0]
    with torch.no_grad():
        probs = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    mass = [float(sum(probs[t] for t in {tokenizer.encode(p + letter, add_special_tokens=False)[0]
                                          for p in ("", " ")})) for letter in "ABC"]
    assert got == pytest.approx([m / sum(mass) for m in mass], rel=1e-4)
