"""greedy / sample / best_of_n on a tiny random model: selection logic, rewards, prompts, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.prompts import load_prompts
from alignkit.data.synthetic import make_synthetic
from alignkit.decoding import DecodeSettings, build_reward, decode, select_best
from alignkit.decoding.rewards import source_spec
from alignkit.decoding.strategies import pass_at, pass_rate_curve
from alignkit.engine.generation import generate

PROMPTS = ["Say hello.", "What is 2 + 2? Answer with just the number.", "Name a colour."]


class LengthReward:
    """Reward = number of characters: best-of-N must keep the longest candidate."""

    def rewards(self, prompts, responses):
        return torch.tensor([float(len(r)) for r in responses])

    def preferences(self, prompts, first, second):  # pragma: no cover - interface only
        raise NotImplementedError


class ConstantReward(LengthReward):
    def rewards(self, prompts, responses):
        return torch.zeros(len(responses))


def test_select_best_breaks_ties_by_logp_then_order():
    assert select_best([0.0, 1.0, 0.5], [-1.0, -9.0, -0.1]) == 1
    assert select_best([1.0, 1.0, 0.0], [-5.0, -2.0, -0.1]) == 1
    assert select_best([1.0, 1.0], [-2.0, -2.0]) == 0
    with pytest.raises(ValueError):
        select_best([], [])


def test_best_of_n_keeps_the_highest_reward(tiny_model, tokenizer):
    rows = decode(tiny_model, tokenizer, PROMPTS, "best_of_n", reward=LengthReward(), n=6, max_new_tokens=8,
                  batch_size=2, log=lambda m: None)
    assert [r["prompt"] for r in rows] == PROMPTS
    for row in rows:
        lengths = [len(c["text"]) for c in row["candidates"]]
        assert len(lengths) == 6 and len(set(lengths)) > 1  # the test means something only if they differ
        assert row["text"] == row["candidates"][row["selected"]]["text"]
        assert len(row["text"]) == max(lengths)
        assert row["candidates"][row["selected"]]["reward"] == max(lengths)
        assert row["tokens_generated"] == sum(c["tokens"] for c in row["candidates"])
        assert row["settings"]["n"] == 6 and row["strategy"] == "best_of_n"


def test_best_of_n_ties_go_to_the_most_likely_sample(tiny_model, tokenizer):
    rows = decode(tiny_model, tokenizer, PROMPTS, "best_of_n", reward=ConstantReward(), n=5, max_new_tokens=6,
                  log=lambda m: None)
    for row in rows:
        logps = [c["logp"] for c in row["candidates"]]
        assert row["selected"] == max(range(5), key=logps.__getitem__)
        assert len(set(logps)) > 1


def test_greedy_and_sample_match_the_engine(tiny_model, tokenizer):
    rows = decode(tiny_model, tokenizer, PROMPTS, "greedy", max_new_tokens=6, log=lambda m: None)
    assert [r["text"] for r in rows] == generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=6)
    first = decode(tiny_model, tokenizer, PROMPTS, "sample", max_new_tokens=6, seed=3, log=lambda m: None)
    again = decode(tiny_model, tokenizer, PROMPTS, "sample", settings=DecodeSettings(max_new_tokens=6, seed=3),
                   log=lambda m: None)
    assert [r["text"] for r in first] == [r["text"] for r in again]


def test_a_strategy_that_needs_a_reward_says_so(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="needs a reward"):
        decode(tiny_model, tokenizer, PROMPTS, "best_of_n", log=lambda m: None)
    with pytest.raises(ValueError, match="did you mean 'best_of_n'"):
        decode(tiny_model, tokenizer, PROMPTS, "best_of_m", log=lambda m: None)


def test_pass_rate_curve_is_the_unbiased_best_of_k_estimate():
    assert pass_at(4, 1, 1) == pytest.approx(0.25)
    assert pass_at(4, 1, 2) == pytest.approx(0.5)
    assert pass_at(4, 0, 4) == 0.0 and pass_at(4, 1, 4) == 1.0
    curve = pass_rate_curve([[True, False, False, False], [False] * 4, [True] * 4], n_boot=200)
    assert [p["n"] for p in curve] == [1, 2, 4]
    assert [p["pass_rate"] for p in curve] == pytest.approx([(0.25 + 1) / 3, (0.5 + 1) / 3, 2 / 3])
    assert all(p["ci_low"] <= p["pass_rate"] <= p["ci_high"] for p in curve)


def test_reward_specs():
    assert source_spec("verifier:synthetic") == "verifier"
    assert source_spec("judge:smollm2-135m-instruct") == {"type": "judge", "model": "smollm2-135m-instruct"}
    assert source_spec("reward_model:runs/rm") == {"type": "reward_model", "model": "runs/rm"}
    for bad in ("verifier:math", "nonsense", "judge:"):
        with pytest.raises(ValueError):
            source_spec(bad)
    combined = build_reward(["2*verifier:synthetic", "0.5*verifier"])
    pair = make_synthetic(1, 0)[0][0]
    assert combined.score([pair.prompt] * 2, [pair.chosen, pair.rejected]) == [2.5, 0.0]
    assert not combined.is_verifier and build_reward("verifier:synthetic").is_verifier


def test_prompts_from_txt_jsonl_and_preference_pairs(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert load_prompts(tmp_path / "p.txt") == [("first", None), ("second", None)]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a", "system": "be brief"}) + "\n"
                                      + json.dumps({"prompt": [{"role": "user", "content": "b"}]}) + "\n")
    assert [p for p, _ in load_prompts(tmp_path / "p.jsonl")] == ["a", [{"role": "user", "content": "b"}]]
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "x", "rejected": "y"}) + "\n")
    assert load_prompts(tmp_path / "pairs.jsonl") == [("q", None)]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(Exception, match="prompt"):
        load_prompts(tmp_path / "bad.jsonl")


@pytest.fixture
def model_dir(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_cli_best_of_n_writes_lines_in_order_and_the_curve(tmp_path, model_dir):
    pairs = make_synthetic(0, 5, seed=1)[1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in pairs))
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(model_dir), "--prompts", str(prompts), "--strategy", "best_of_n",
                                 "--reward", "verifier:synthetic", "--n", "4", "--max-new-tokens", "4",
                                 "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p.prompt for p in pairs]
    assert all(len(r["candidates"]) == 4 and r["seconds"] >= 0 for r in rows)
    curve = json.loads((tmp_path / "out.curve.json").read_text())["pass_rate_curve"]
    assert [p["n"] for p in curve] == [1, 2, 4]
    missing = runner.invoke(app, ["generate", str(model_dir), "--prompts", str(prompts), "--strategy", "best_of_n",
                                  "--out", str(out)])
    lines = [line for line in missing.output.splitlines() if line.strip()]
    assert missing.exit_code == 2 and len(lines) == 1 and "needs a reward" in lines[0], missing.output
