"""``alignkit eval RM_DIR --data PAIRS`` on a reward model: detection, accuracy with CI, margins, length buckets,
calibration (by hand), RewardBench subsets, the per-example table, and clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data import make_synthetic, write_jsonl
from alignkit.eval.config import load_eval_config
from alignkit.eval.pipeline import EvalError, run_eval
from alignkit.eval.reward_models import calibration_table, is_reward_model, length_buckets, reward_summary
from alignkit.rewards import RewardModel

runner = CliRunner()


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("rm")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    return root / "rm"


@pytest.fixture(scope="module")
def rewardbench_file(tmp_path_factory):
    pairs, _ = make_synthetic(24, 0, seed=0)
    subsets = ["chat", "safety", "reasoning"]
    tagged = [p.model_copy(update={"metadata": {"subset": subsets[i % 3]}}) for i, p in enumerate(pairs)]
    return write_jsonl(tagged, tmp_path_factory.mktemp("data") / "rb.jsonl")


def test_calibration_by_hand():
    margins = np.array([0.0, math.log(3.0), -math.log(3.0), 10.0])  # σ: 0.5, 0.75, 0.25, ~1
    bins, ece = calibration_table(margins, n_bins=2)
    # both orders: predictions {0.5, .75, .25, ~1} with outcome 1 and {0.5, .25, .75, ~0} with outcome 0
    low, high = bins
    assert (low["n"], high["n"]) == (3, 5)  # 0.5 falls in the upper bin
    assert low["predicted"] == pytest.approx((0.25 + 0.25 + (1 - 1 / (1 + math.exp(-10)))) / 3)
    assert low["observed"] == pytest.approx(1 / 3)
    assert high["observed"] == pytest.approx(3 / 5)
    expected = 3 / 8 * abs(low["observed"] - low["predicted"]) + 5 / 8 * abs(high["observed"] - high["predicted"])
    assert ece == pytest.approx(expected)
    perfect, ece = calibration_table(np.array([100.0] * 5), n_bins=10)
    assert ece == pytest.approx(0.0, abs=1e-9) and perfect[0]["n"] == perfect[-1]["n"] == 5


def test_length_buckets_and_long_response_bias():
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    tc, tr = np.array([10.0, 2.0, 30.0, 5.0]), np.array([5.0, 4.0, 10.0, 5.0])
    margins = np.array([1.0, -1.0, 2.0, 0.5])
    out = length_buckets(correct, tc, tr, margins, n_buckets=2)
    assert out["chosen_longer"] == {"n": 2, "accuracy": 1.0}
    assert out["chosen_shorter"] == {"n": 1, "accuracy": 0.0}
    assert out["prefers_longer"] == pytest.approx(1.0)  # pairs 0 and 2 reward the longer chosen, 1 the longer rejected
    assert sum(b["n"] for b in out["buckets"]) == 4


def test_summary_subsets_and_ci():
    chosen, rejected = np.array([1.0, 2.0, 0.0, 3.0]), np.array([0.0, 3.0, 0.0, 1.0])
    out = reward_summary(chosen, rejected, np.ones(4), np.ones(4), ["a", "a", "b", None], n_bootstrap=200)
    assert out["reward/accuracy"] == 0.5 and out["ties"] == 1 and out["reward/margin"] == pytest.approx(0.5)
    assert out["reward/accuracy_ci_low"] <= 0.5 <= out["reward/accuracy_ci_high"]
    assert out["by_subset"] == {"a": {"n": 2, "accuracy": 0.5}, "b": {"n": 1, "accuracy": 0.0},
                                "(none)": {"n": 1, "accuracy": 1.0}}


def test_eval_recognises_a_reward_model(rm_dir, rewardbench_file, tmp_path, tokenizer):
    assert is_reward_model(str(rm_dir)) and not is_reward_model(str(tmp_path))
    config = load_eval_config(None, ["preferences.n_bootstrap=200"],
                              {"model": str(rm_dir), "data.path": str(rewardbench_file), "out": tmp_path / "out",
                               "format": "jsonl", "progress": False})
    run = run_eval(config, log=lambda m: None)
    rm = run.summary["reward_model"]
    assert run.summary["kind"] == "reward_model" and rm["n_examples"] == 24
    assert set(rm["by_subset"]) == {"chat", "safety", "reasoning"}
    assert sum(b["n"] for b in rm["calibration"]) == 48
    rows = [json.loads(line) for line in run.paths["per_example"].read_text().splitlines()]
    assert len(rows) == 24 and {"reward_chosen", "reward_rejected", "margin", "p_chosen", "subset"} <= set(rows[0])
    assert np.mean([r["correct"] for r in rows]) == pytest.approx(rm["reward/accuracy"])
    # the table's rewards are the scorer's own
    pairs, _ = make_synthetic(24, 0, seed=0)
    scorer = RewardModel(str(rm_dir))
    assert scorer([pairs[3].prompt], [pairs[3].chosen])[0] == pytest.approx(rows[3]["reward_chosen"], abs=1e-5)
    summary = json.loads(run.paths["summary"].read_text())
    assert summary["reward_model"]["reward/accuracy"] == rm["reward/accuracy"]


def test_reward_model_eval_errors_and_cli(rm_dir, rewardbench_file, tmp_path):
    config = load_eval_config(None, [], {"model": str(rm_dir), "data.path": str(rewardbench_file),
                                         "reference": "smollm2-135m-instruct", "progress": False})
    with pytest.raises(EvalError, match="is a reward model .* drop --reference"):
        run_eval(config, log=lambda m: None)
    result = runner.invoke(app, ["eval", str(rm_dir), "--data", str(rewardbench_file), "--out", str(tmp_path / "o"),
                                 "--no-progress", "preferences.n_bootstrap=100"])
    assert result.exit_code == 0, result.output
    assert "reward/accuracy" in result.output and "subset chat" in result.output
