"""Reselecting saved best-of-N candidates with the raw sum and the LSC sum (alignkit.rewards.lsc_select): the two
objectives of the length-limited fact prompts, the selection by hand, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.synthetic import make_synthetic, verify
from alignkit.rewards.lsc_select import (
    Brevity,
    Brief,
    Correct,
    compare_selection,
    length_prompts,
    length_task,
    parse_selector,
    pick,
    term_rewards,
)

CONCISE = "What is the capital of France? Be brief."
UNDER = "Answer in under 4 words: what is the capital of France?"
ONE_WORD = "Reply with exactly one word: what is the capital of France?"
# c0 correct but long, c1 correct and brief, c2 short and wrong, c3 long and wrong.
TEXTS = ["The capital of France is Paris, a lovely city with many museums.", "Its capital is Paris.", "Rome.",
         "France's capital city is a famous place known for art and food everywhere."]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_the_two_checks_and_the_continuous_reward():
    assert length_task(CONCISE)[1] == "concise" and length_task(CONCISE)[0].answer == "Paris"
    assert length_task(UNDER)[1] == length_task(ONE_WORD)[1] == "format"
    assert length_task("What is 2 + 3? Answer with just the number.") is None
    assert length_task('Reply in JSON with key "answer": what is the capital of France?') is None
    prompts = [CONCISE] * 4
    assert Correct().rewards(prompts, TEXTS).tolist() == [1, 1, 0, 0]
    assert Brief().rewards(prompts, TEXTS).tolist() == [0, 1, 1, 0]
    assert Brevity().rewards(prompts, TEXTS).tolist() == [-6.0, -2.0, -0.5, -6.5]
    # Correct and brief together are the concise verifier; brief on format prompts is the format verifier.
    for text in TEXTS:
        assert (Correct().score(CONCISE, text) * Brief().score(CONCISE, text) == 1) == verify(CONCISE, text)
    assert Brief().rewards([UNDER, UNDER, ONE_WORD, ONE_WORD], ["Paris.", "It is Paris indeed.", "Paris.", "It's Paris"]
                           ).tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="word limit"):
        Correct().rewards(["What is 2 + 3? Answer with just the number."], ["5"])


def test_lsc_sum_picks_the_response_passing_both_where_the_raw_sum_picks_the_shortest():
    rows = [{"prompt": CONCISE, "candidates": [{"text": t, "logp": -float(i)} for i, t in enumerate(TEXTS)]}]
    report = compare_selection(rows, ["raw=correct+brevity", "lsc=lsc:correct+lsc:brevity"], ["correct", "brief"])
    # By hand. Raw: 1 − 6, 1 − 2, 0 − 0.5, 0 − 6.5 -> c2 (short, wrong).
    # LSC: r_ref = median of the candidates' rewards: correct 0.5, brevity (−6 − 2)/2 = −4.
    lsc = [logsig(c - 0.5) + logsig(b + 4) for c, b in ((1, -6), (1, -2), (0, -0.5), (0, -6.5))]
    assert max(range(4), key=lambda i: lsc[i]) == 1
    raw, summed = report["selectors"]["raw"], report["selectors"]["lsc"]
    assert raw["pass_all"]["mean"] == 0 and raw["per_check"] == {"correct": 0.0, "brief": 1.0} and raw["words"] == 1
    assert summed["pass_all"]["mean"] == 1 and summed["words"] == 4 and summed["minus_raw"]["mean"] == 1
    assert report["baselines"]["first_candidate"]["pass_all"]["mean"] == 0
    assert report["baselines"]["any_candidate"]["pass_all"]["mean"] == 1
    # Down-weighting brevity fixes the raw sum here (1 − 0.5 > 0 − 0.125): the raw sum depends on the weights.
    weighted = compare_selection(rows, ["raw=correct+0.25*brevity"], ["correct", "brief"])
    assert weighted["selectors"]["raw"]["pass_all"]["mean"] == 1


def test_each_reward_is_scored_once_and_shared_by_checks_raw_and_lsc_terms(monkeypatch):
    calls = []
    score = Correct.rewards

    def counted(self, prompts, responses):
        calls.append(len(responses))
        return score(self, prompts, responses)

    monkeypatch.setattr(Correct, "rewards", counted)
    rows = [{"prompt": CONCISE, "candidates": [{"text": t} for t in TEXTS]}]
    report = compare_selection(rows, ["raw=correct+brevity", "lsc=lsc:correct+lsc:brevity"], ["correct", "brief"])
    assert calls == [4]  # one pass over the four candidates for the check, the raw term and lsc:correct's body
    assert report["selectors"]["lsc"]["pass_all"]["mean"] == 1
    # lsc:brevity by hand: brevity −6, −2, −0.5, −6.5 with the median −4 as r_ref; a repeated prompt keeps the
    # reference of its first row
    got = term_rewards(["lsc:brevity", "brevity"], [CONCISE, CONCISE], [TEXTS, TEXTS[1:3]])
    assert got["brevity"].tolist() == [-6.0, -2.0, -0.5, -6.5, -2.0, -0.5]
    assert got["lsc:brevity"].tolist() == pytest.approx([logsig(b + 4) for b in (-6, -2, -0.5, -6.5, -2, -0.5)])


def test_with_two_binary_checks_both_sums_pick_a_response_passing_both():
    rows = [{"prompt": CONCISE, "candidates": [{"text": t} for t in TEXTS]},
            {"prompt": UNDER, "candidates": [{"text": t} for t in ["The capital is Paris.", "Paris.", "Rome."]]}]
    report = compare_selection(rows, ["raw=correct+brief", "lsc=lsc:correct+lsc:brief"], ["correct", "brief"])
    assert report["selectors"]["raw"]["pass_all"]["mean"] == report["selectors"]["lsc"]["pass_all"]["mean"] == 1


def test_ties_go_to_the_higher_log_prob_and_selectors_parse():
    assert pick([1.0, 2.0, 2.0], [-1.0, -3.0, -2.0]) == 2
    assert pick([0.0, 0.0], [None, -5.0]) == 1
    assert parse_selector("lsc = lsc@0.85:correct + 0.5*brevity") == ("lsc", [(1.0, "lsc@0.85:correct"),
                                                                              (0.5, "brevity")])
    for bad in ("correct+brevity", "x=", "x=a*correct", "x=correct+"):
        with pytest.raises(ValueError, match="selector"):
            parse_selector(bad)
    with pytest.raises(ValueError, match="line 2"):
        compare_selection([{"prompt": CONCISE, "candidates": [{"text": "Paris."}]}, {"prompt": CONCISE}],
                          ["raw=correct"], ["correct"], source="bon.jsonl")


def test_prompts_are_distinct_held_out_length_tasks():
    prompts = length_prompts(40)
    train, _ = make_synthetic(2000, 0, families=["concise", "format"])
    assert len(set(prompts)) == 40 and all(length_task(p) is not None for p in prompts)
    assert not set(prompts) & {p.prompt for p in train}
    assert {length_task(p)[1] for p in prompts} == {"concise", "format"}


def test_cli_prompts_and_compare(tmp_path):
    runner = CliRunner()
    prompts = tmp_path / "prompts.jsonl"
    result = runner.invoke(app, ["reward", "lsc-prompts", str(prompts), "--n", "5"])
    assert result.exit_code == 0, result.output
    assert len(prompts.read_text().splitlines()) == 5
    again = runner.invoke(app, ["reward", "lsc-prompts", str(prompts), "--n", "5"])
    assert again.exit_code != 0 and "--overwrite" in again.output
    bon = tmp_path / "bon.jsonl"
    bon.write_text(json.dumps({"prompt": CONCISE, "candidates": [{"text": t} for t in TEXTS]}) + "\n")
    result = runner.invoke(app, ["reward", "lsc-compare", str(bon), "--select", "raw=correct+brevity", "--select",
                                 "lsc=lsc:correct+lsc:brevity", "--passes", "correct", "--passes", "brief",
                                 "--report", str(tmp_path / "cmp.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["selectors"]["lsc"]["pass_all"]["mean"] == 1 and saved["selectors"]["raw"]["pass_all"]["mean"] == 0
