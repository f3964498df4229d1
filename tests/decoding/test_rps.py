"""RPS on a tiny random model: the neighbourhood, the stated directions, selection by projection, the baseline."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.synthetic import make_synthetic
from alignkit.decoding import decode, rps
from alignkit.decoding.rewards import Reward

PROMPTS = ["Say hello.", "Name a colour."]
# (r_1, r_2) of candidate j of every prompt. At θ* = 0 the highest projection is candidate 0 (1.5), while
# candidate 3 (offset +30°) wins on r_1 + r_2 and along its own direction: selecting by either is caught.
VECTORS = [(1.5, 0.0), (0.0, 1.0), (1.2, 1.2), (0.2, 5.0), (-1.0, 3.0)]
EXPECTED = {0.0: 0, 90.0: 3, 45.0: 3, 180.0: 4, -60.0: 0}


class Scripted:
    """Component ``axis`` of VECTORS[j] for candidate j (texts arrive prompt-major, k per prompt)."""

    def __init__(self, axis: int, k: int = len(VECTORS)) -> None:
        self.axis, self.k, self.seen = axis, k, 0

    def rewards(self, prompts, responses):
        out = [VECTORS[(self.seen + i) % self.k][self.axis] for i in range(len(responses))]
        self.seen += len(responses)
        return torch.tensor(out)


def vector_reward() -> Reward:
    return Reward([(1.0, Scripted(0)), (1.0, Scripted(1))], names=["help", "verb"])


def stated_directions(rows) -> list[tuple[float, float]]:
    """The unit directions the encoded rows state (read back from the instruction)."""
    directions = []
    for messages, system in rows:
        assert system is None
        text = " ".join(m["content"] for m in messages)
        v1, v2 = map(float, re.search(r"direction \((-?[\d.]+), (-?[\d.]+)\)", text).groups())
        assert "help × " in text and "verb × " in text
        directions.append((v1, v2))
    return directions


def unit(angle: float) -> tuple[float, float]:
    return math.cos(math.radians(angle)), math.sin(math.radians(angle))


@pytest.fixture
def spy(monkeypatch):
    """Every row rps hands to the encoder, per call."""
    calls = []
    real = rps.encode_prompts

    def record(ctx, rows):
        calls.append(list(rows))
        return real(ctx, rows)

    monkeypatch.setattr(rps, "encode_prompts", record)
    return calls


def test_neighbourhood_is_spread_evenly_around_the_target():
    assert rps.neighbourhood(5, 30) == [0.0, 15.0, -15.0, 30.0, -30.0]
    assert rps.neighbourhood(3, 20) == [0.0, 20.0, -20.0]
    assert rps.neighbourhood(4, 30) == [0.0, 15.0, -15.0, 30.0]
    assert rps.neighbourhood(1, 30) == [0.0]
    assert rps.projection((1.0, 2.0), 90.0) == pytest.approx(2.0)
    assert rps.projection((1.0, 1.0), 45.0) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("angle", sorted(EXPECTED))
def test_rps_keeps_the_highest_projection_on_the_target(tiny_model, tokenizer, spy, angle):
    rows = decode(tiny_model, tokenizer, PROMPTS, "rps", reward=vector_reward(), rps_k=5, rps_angle=angle,
                  rps_radius=30.0, max_new_tokens=4, log=lambda m: None)
    v1, v2 = unit(angle)
    for row in rows:
        cands = row["candidates"]
        assert [(c["reward_1"], c["reward_2"]) for c in cands] == [pytest.approx(v) for v in VECTORS]
        assert [c["reward"] for c in cands] == pytest.approx([v1 * a + v2 * b for a, b in VECTORS])
        assert row["selected"] == EXPECTED[angle] and row["text"] == cands[EXPECTED[angle]]["text"]
        assert [c["rps_offset"] for c in cands] == [0.0, 15.0, -15.0, 30.0, -30.0]
        assert row["tokens_generated"] == sum(c["tokens"] for c in cands)
        assert row["settings"]["rps_k"] == 5 and row["settings"]["rps_baseline"] is False
    # one row per (prompt, direction), each stating its own direction around the target
    (encoded,) = spy
    expected = [unit(angle + d) for d in (0, 15, -15, 30, -30)] * len(PROMPTS)
    assert [pytest.approx(v, abs=0.006) for v in stated_directions(encoded)] == expected


def test_baseline_samples_k_times_at_the_target_only(tiny_model, tokenizer, spy):
    rows = decode(tiny_model, tokenizer, PROMPTS, "rps", reward=vector_reward(), rps_k=5, rps_angle=90.0,
                  rps_baseline=True, temperature=1.0, max_new_tokens=6, log=lambda m: None)
    (encoded,) = spy
    assert len(encoded) == len(PROMPTS)  # one prefill per prompt, k samples from it
    assert [pytest.approx(v, abs=0.006) for v in stated_directions(encoded)] == [unit(90.0)] * len(PROMPTS)
    for row in rows:
        cands = row["candidates"]
        assert len(cands) == 5 and all(c["rps_offset"] == 0.0 and c["rps_angle"] == 90.0 for c in cands)
        assert row["selected"] == EXPECTED[90.0]
        assert len({c["text"] for c in cands}) > 1  # samples, not one greedy answer repeated
        assert row["settings"]["rps_baseline"] is True


def test_the_direction_goes_into_the_system_message_or_the_prompt(tiny_model, tokenizer, spy):
    decode(tiny_model, tokenizer, [("Say hello.", "Be brief.")], "rps", reward=vector_reward(), rps_k=1,
           rps_objectives=("helpfulness", "verbosity"), max_new_tokens=2, log=lambda m: None)
    decode(tiny_model, tokenizer, ["Say hello."], "rps", reward=vector_reward(), rps_k=1, rps_in_prompt=True,
           max_new_tokens=2, log=lambda m: None)
    (system_row,), (prompt_row,) = spy
    messages, _ = system_row
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == "Say hello."
    assert messages[0]["content"].startswith("Be brief.\n\n") and "helpfulness × 0.71" in messages[0]["content"]
    messages, _ = prompt_row
    assert [m["role"] for m in messages] == ["user"] and messages[0]["content"].endswith("\n\nSay hello.")


def test_rps_needs_two_objectives(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="needs a reward"):
        decode(tiny_model, tokenizer, PROMPTS, "rps", log=lambda m: None)
    with pytest.raises(ValueError, match="two --reward specs"):
        decode(tiny_model, tokenizer, PROMPTS, "rps", reward=Reward([(1.0, Scripted(0))]), log=lambda m: None)


def test_cli_rps_options(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    pairs = make_synthetic(0, 3, seed=1)[1]  # the verifiers know these prompts
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in pairs))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, [
        "generate", str(tmp_path / "tiny"), "--prompts", str(prompts), "--strategy", "rps",
        "--reward", "verifier:synthetic", "--reward", "2*verifier:synthetic", "--rps-k", "3", "--rps-angle", "30",
        "--rps-radius", "20", "--rps-objectives", "help, verb", "--max-new-tokens", "3", "--out", str(out),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p.prompt for p in pairs]
    for row in rows:
        assert all(c["reward_2"] == 2 * c["reward_1"] for c in row["candidates"])
        assert [c["rps_angle"] for c in row["candidates"]] == [30.0, 50.0, 10.0]
        assert row["settings"]["rps_objectives"] == ["help", "verb"] and row["settings"]["rps_radius"] == 20.0
