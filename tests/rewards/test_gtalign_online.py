"""GTAlign's mutual-welfare reward in an online training run (examples/gtalign_online.yaml: GRAO with formatted
reference answers), its partial credit for malformed outputs, and the formatted training data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.synthetic import make_synthetic, verify
from alignkit.models import tiny_llama
from alignkit.rewards import build_source
from alignkit.rewards.gtalign import (
    GTALIGN_INSTRUCTION,
    GTAlignReward,
    demonstration,
    format_progress,
    gtalign_pairs,
    length_logistic,
    parse_output,
)
from alignkit.train.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gtalign_online.yaml"


def test_format_progress_and_partial_credit_of_malformed_outputs():
    full = demonstration("Paris.")
    assert format_progress(full) == 1.0 and format_progress("no tags at all") == 0.0
    truncated = full[: full.index("</response>")]  # cut off before the last tag
    assert format_progress(truncated) == 7 / 8
    assert format_progress("</thinking> before <thinking>") == 1 / 8  # tags count only in order
    reference, shaped = GTAlignReward(), GTAlignReward(partial_credit=0.05)
    prompts = ["What is the capital of France? Be brief."] * 3
    outputs = [truncated, "<thinking>hmm</thinking> Paris.", "Paris."]
    assert reference.rewards(prompts, outputs).tolist() == [0.0, 0.0, 0.0]  # the reference: a constant penalty
    assert shaped.rewards(prompts, outputs).tolist() == pytest.approx([0.05 * 7 / 8, 0.05 * 2 / 8, 0.0])
    assert shaped.last[0].parts["malformed"] and shaped.last[0].parts["progress"] == 7 / 8
    with pytest.raises(ValueError, match="partial_credit"):
        GTAlignReward(partial_credit=2.0)


def test_demonstrations_are_well_formed_with_a_non_degenerate_matrix():
    pairs = gtalign_pairs(make_synthetic(8, 0, families=["concise", "arithmetic"])[0])
    reward = GTAlignReward()
    for pair in pairs:
        assert pair.system == GTALIGN_INSTRUCTION
        parsed = parse_output(pair.chosen)
        assert parsed.format_score == 1.0 and verify(pair.prompt, parsed.response)
        (welfare,) = reward.welfare([pair.prompt], [pair.chosen])
        assert welfare.parts["payoff_quality"] == pytest.approx(1.0) and welfare.parts["action"] == "DQ_DA"
        # By hand with q = 1, format 1, payoff quality 1.
        reasoning = len(parsed.thinking) + len(parsed.analyze)
        u_user = 1e-4 + 0.5 + 0.2 * length_logistic(len(parsed.response.split()), 20, 500) + \
            0.3 * math.exp(-reasoning / 500)
        u_llm = 1e-4 + 0.2 + 0.2 + 0.4 + 0.2 * length_logistic(len(pair.chosen.split()), 500, 1000)
        assert welfare.reward == pytest.approx(math.sqrt(u_user * u_llm))
        # The rejected answer fails the verifier: the same format, less welfare.
        assert reward.rewards([pair.prompt], [pair.rejected]).item() < welfare.reward - 0.3


def test_the_example_config_builds_the_gtalign_reward(tmp_path):
    config = load_config(str(EXAMPLE), [f"output_dir={tmp_path / 'run'}"])
    objective = config.objectives[0]
    assert objective.name == "grao" and objective.params["include_reference"] is True
    source = build_source(objective.params["reward"])
    assert isinstance(source, GTAlignReward) and source.partial_credit == 0.05


def test_gtalign_online_example_trains_two_steps_with_the_welfare_reward(tmp_path, tokenizer):
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(app, ["reward", "gtalign-data", str(data), "--n-train", "2", "--n-test", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["system"] == GTALIGN_INSTRUCTION for r in rows)
    # Both training prompts are in every batch of 2, so the logged reward of the reference answers is known.
    expected = sum(GTAlignReward().rewards([r["prompt"]], [r["chosen"]]).item() for r in rows) / 2
    model_dir = tmp_path / "tiny"
    tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", str(EXAMPLE), f"output_dir={run}", f"model.name={model_dir}",
                                 "model.device=cpu", f"data.train={data / 'train.jsonl'}",
                                 f"data.eval={data / 'test.jsonl'}", "max_steps=2", "eval_every=0", "progress=false",
                                 "lora.enabled=false", "objectives.0.max_new_tokens=8", "objectives.0.group_size=2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert len(train) == 2
    for m in train:
        assert m["reference_reward_mean"] == pytest.approx(expected, rel=1e-5)
        # A random tiny model writes no tag: its samples get the malformed reward, 0 here (0.05 × progress 0).
        assert m["reward_mean"] == pytest.approx(0.0, abs=0.05)
        # Advantages over the samples and the formatted reference: the groups have variance, y is imitated.
        assert m["zero_variance_fraction"] == 0 and m["reference_beats_all_fraction"] == 1
        assert m["loss/imitation"] > 0
