"""GTAlign (Zhu et al. 2025, arXiv:2510.08872): the payoff-matrix format, its parser, and the mutual-welfare
reward R = sqrt(U_user · U_LLM) against hand-worked values; the reward spec of decoding and build_source."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.synthetic import make_synthetic
from alignkit.decoding.rewards import build_reward, source_spec
from alignkit.rewards import VerifierReward, build_source
from alignkit.rewards.gtalign import (
    GTAlignReward,
    length_logistic,
    mutual_welfare,
    parse_output,
    parse_payoff,
    payoff_quality,
    welfare_action,
)

MATRIX = {"DQ_AQ": {"LLM": 2, "user": 2}, "DQ_CQ": {"LLM": 1, "user": 1.05}, "DQ_DA": {"LLM": 1, "user": 2},
          "VQ_AQ": {"LLM": 3, "user": 1}, "VQ_CQ": {"LLM": 0, "user": 0}, "VQ_DA": {"LLM": -1, "user": 1}}
RESPONSE = " ".join(f"w{i}" for i in range(1, 21))  # 20 words


def output(payoff: str | None = None, analyze: bool = True, response: bool = True) -> str:
    payoff = json.dumps(MATRIX, separators=(",", ":")) if payoff is None else payoff
    parts = ["<thinking>abc</thinking>", f"<payoff>{payoff}</payoff>"]
    parts += ["<analyze>de</analyze>"] if analyze else []
    parts += [f"<response>{RESPONSE}</response>"] if response else []
    return "\n".join(parts)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_payoff_quality_and_welfare_action_by_hand():
    # equal (0) + within 10% (1/12) + 1 vs 2 (2/12) + 3 vs 1 (2/12) + 0 vs 0 (0) + -1 vs 1 (2/12) = 7/12
    assert payoff_quality(parse_payoff(json.dumps(MATRIX))) == pytest.approx(7 / 12)
    assert payoff_quality(None) == 0.0
    assert welfare_action(parse_payoff(json.dumps(MATRIX))) == "DQ_AQ"  # sqrt(2·2) beats sqrt(3·1), sqrt(2·1)


def test_parser_accepts_python_literals_and_refuses_bad_matrices():
    literal = str({k: {"LLM": v["LLM"], "user": v["user"]} for k, v in MATRIX.items()})  # single quotes
    assert parse_payoff(literal)["VQ_DA"] == {"LLM": -1.0, "user": 1.0}
    curly = json.dumps(MATRIX).replace('"', "\u201c", 1)
    assert parse_payoff(curly)["DQ_AQ"]["user"] == 2.0
    for bad, message in ((json.dumps({k: v for k, v in MATRIX.items() if k != "VQ_DA"}), "payoff keys"),
                         (json.dumps({**MATRIX, "DQ_AQ": {"LLM": True, "user": 1}}), "finite numbers"),
                         (json.dumps({**MATRIX, "DQ_AQ": {"LLM": 1}}), "exactly 'LLM' and 'user'"),
                         ("[1, 2]", "must be an object"), ("{not json", "neither JSON")):
        with pytest.raises(ValueError, match=message):
            parse_payoff(bad)


def test_format_scores_of_the_reference():
    assert parse_output(output()).format_score == 1.0
    broken = parse_output(output(payoff='{"DQ_AQ": 1}'))
    assert broken.format_score == 0.5 and broken.payoff is None and "payoff keys" in broken.payoff_error
    no_analyze = parse_output(output(analyze=False))
    assert no_analyze.format_score == 0.0 and no_analyze.response == RESPONSE and not no_analyze.malformed
    assert parse_output(output(response=False)).malformed
    assert parse_output("just an answer").malformed


def test_mutual_welfare_against_hand_worked_values():
    welfare = mutual_welfare(parse_output(output()), quality=1.0)
    # 20 response words, 23 words in all (each tag block without spaces is one word), 3 + 2 reasoning chars.
    u_user = 1e-4 + 0.5 + 0.2 * sigmoid(0.0) * sigmoid(0.005 * 480) + 0.3 * math.exp(-5 / 500)
    u_llm = 1e-4 + 0.2 * 1.0 + 0.2 * 7 / 12 + 0.4 * 1.0 + 0.2 * sigmoid(0.005 * -477) * sigmoid(0.005 * 977)
    assert welfare.user == pytest.approx(u_user) and welfare.llm == pytest.approx(u_llm)
    assert welfare.reward == pytest.approx(math.sqrt(u_user * u_llm))
    # A failed answer loses 0.5 of U_user and 0.4 of U_LLM; quality is clamped to [0, 1].
    zero = mutual_welfare(parse_output(output()), quality=-3.0)
    assert zero.user == pytest.approx(u_user - 0.5) and zero.llm == pytest.approx(u_llm - 0.4)
    assert mutual_welfare(parse_output(output(response=False)), 1.0, malformed_reward=-1.0).reward == -1.0
    assert length_logistic(260, 20, 500) == pytest.approx(sigmoid(1.2) ** 2)


class TableReward:
    def __init__(self, table):
        self.table, self.asked = table, []

    def rewards(self, prompts, responses):
        self.asked += list(responses)
        return torch.tensor([self.table[r] for r in responses])

    def preferences(self, prompts, first, second):
        raise NotImplementedError


def test_reward_source_asks_quality_only_of_well_formed_responses():
    quality = TableReward({RESPONSE: 0.0})
    source = GTAlignReward(quality, quality_scale="sigmoid")  # sigmoid(0) = 0.5
    rewards = source.rewards(["q", "q"], [output(), "no format at all"])
    assert quality.asked == [RESPONSE]
    expected = mutual_welfare(parse_output(output()), 0.5).reward
    assert rewards.tolist() == pytest.approx([expected, 0.0])
    assert source.last[1].parts["malformed"] is True
    p = source.preferences(["q"], [output()], ["no format at all"])
    assert float(p) == pytest.approx((1 + expected) / 2)
    with pytest.raises(ValueError, match="quality_scale"):
        GTAlignReward(quality, quality_scale="tanh")


def test_specs_build_gtalign_with_the_synthetic_verifiers():
    assert source_spec("gtalign") == {"type": "gtalign"}
    assert source_spec("gtalign:rm:runs/rm") == {"type": "gtalign", "quality": {"type": "reward_model",
                                                                                "model": "runs/rm"}}
    source = build_source({"type": "gtalign"})
    assert isinstance(source, GTAlignReward) and isinstance(source.quality, VerifierReward)
    pair = make_synthetic(n_train=1, n_test=0, families=["format"])[0][0]

    def formatted(answer: str) -> str:
        return output().replace(f"<response>{RESPONSE}</response>", f"<response>{answer}</response>")

    good, bad = build_reward(["gtalign"]).score([pair.prompt] * 2, [formatted(pair.chosen), formatted(pair.rejected)])
    assert good > bad  # the verifier passes the chosen answer inside <response> and fails the rejected one


def test_cli_scores_a_file(tmp_path):
    pair = make_synthetic(n_train=1, n_test=0, families=["format"])[0][0]
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"prompt": pair.prompt, "response": output()}) + "\n"
                    + json.dumps({"prompt": pair.prompt, "response": "plain"}) + "\n")
    result = CliRunner().invoke(app, ["reward", "gtalign-score", str(path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert lines[1]["reward"] == 0.0 and lines[1]["malformed"] is True
    assert lines[0]["format"] == 1.0 and lines[0]["action"] == "DQ_AQ"
    instruction = CliRunner().invoke(app, ["reward", "gtalign-instruction"])
    assert "<payoff>" in instruction.output and "DQ_AQ" in instruction.output
