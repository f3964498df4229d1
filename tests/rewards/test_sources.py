"""Reward and preference sources: verifier, reward model (Bradley-Terry), LM judge (both orders)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from alignkit.data.synthetic import make_synthetic
from alignkit.rewards import JudgePreference, RewardModel, VerifierReward, build_source
from alignkit.rewards.judge import LMJudge


def test_verifier_rewards_and_preferences():
    pairs = make_synthetic(8, 0)[0]
    prompts = [p.prompt for p in pairs]
    source = VerifierReward()
    assert source.rewards(prompts, [p.chosen for p in pairs]).tolist() == [1.0] * 8
    assert source.rewards(prompts, [p.rejected for p in pairs]).tolist() == [0.0] * 8
    p = source.preferences(prompts[:3], [pairs[0].chosen, pairs[1].rejected, pairs[2].chosen],
                           [pairs[0].rejected, pairs[1].chosen, pairs[2].chosen])
    assert p.tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="no synthetic task family"):
        source.rewards(["Tell me a story."], ["Once upon a time."])
    assert VerifierReward(unknown_reward=0.0).rewards(["Tell me a story."], ["x"]).tolist() == [0.0]
    with pytest.raises(ValueError, match="differ in length"):
        source.rewards(prompts, ["a"])


@pytest.fixture
def reward_model_dir(tmp_path, tokenizer):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def test_reward_model_is_bradley_terry_and_padding_invariant(reward_model_dir):
    prompts = ["What is 2 + 2?", "Name a color.", "Say hi."]
    first = ["4", "Blue is a color that many people like a lot.", "hi"]
    second = ["Four, obviously, because two and two make four.", "red", "Hello there!"]
    one_by_one = RewardModel(str(reward_model_dir), batch_size=1)
    batched = RewardModel(str(reward_model_dir), batch_size=6)
    r_single = one_by_one.rewards(prompts + prompts, first + second)
    r_batch = batched.rewards(prompts + prompts, first + second)
    torch.testing.assert_close(r_single, r_batch, atol=1e-4, rtol=1e-4)
    p = batched.preferences(prompts, first, second)
    torch.testing.assert_close(p, torch.sigmoid(r_batch[:3] - r_batch[3:]))
    torch.testing.assert_close(batched.preferences(prompts, second, first), 1 - p, atol=1e-5, rtol=1e-5)
    assert "What is 2 + 2?" in batched.render(prompts[0], first[0])  # the chat template is applied


class BiasedJudge:
    """P(first better) = 0.7 for the longer response, 0.3 otherwise, plus a +0.2 first-position bias."""

    def __call__(self, prompt: str, first: str, second: str) -> float:
        return (0.7 if len(first) > len(second) else 0.3) + 0.2


def test_judge_preference_cancels_position_bias(tiny_model, tokenizer):
    source = JudgePreference(BiasedJudge())
    p = source.preferences(["q", "q"], ["long answer", "s"], ["s", "long answer"])
    assert p.tolist() == pytest.approx([0.7, 0.3])
    lm = JudgePreference(LMJudge(tiny_model, tokenizer))
    forward = lm.preferences(["What is 2 + 2?"], ["4"], ["5"])
    backward = lm.preferences(["What is 2 + 2?"], ["5"], ["4"])
    assert 0.0 <= forward.item() <= 1.0
    assert forward.item() + backward.item() == pytest.approx(1.0, abs=1e-5)


def test_build_source(reward_model_dir):
    assert isinstance(build_source("verifier"), VerifierReward)
    assert isinstance(build_source(None), VerifierReward)
    assert build_source({"type": "verifier", "unknown_reward": 0.5}).unknown_reward == 0.5
    rm = build_source({"type": "reward_model", "model": str(reward_model_dir), "temperature": 2.0})
    assert isinstance(rm, RewardModel) and rm.temperature == 2.0
    assert isinstance(build_source("alignkit.rewards.sources:VerifierReward"), VerifierReward)  # a class
    with pytest.raises(ValueError, match="no preferences"):
        build_source("tests.rewards.test_sources:BiasedJudge")  # a bare judge needs JudgePreference
    with pytest.raises(ValueError, match="give 'model'"):
        build_source({"type": "reward_model"})
    with pytest.raises(ValueError, match="module:attr"):
        build_source("no_such_source")


def test_one_reward_model_scorer_truncates_the_prompt_never_the_response_end(reward_model_dir):
    """The score is read at the last token, so a long input loses its start (the prompt), not its end."""
    import alignkit.eval

    assert alignkit.eval.RewardModel is RewardModel  # eval and the online methods share the scorer
    rm = RewardModel(str(reward_model_dir), max_length=12)
    long_prompt = "Please read this. " * 40
    full = rm.tokenizer(rm.render(long_prompt, "The answer is 42."), add_special_tokens=False).input_ids
    assert len(full) > 12 and rm.encode(long_prompt, "The answer is 42.") == full[-12:]
    # Cut from the right (the old rewards scorer), both responses would vanish and score the same.
    scores = rm.rewards([long_prompt] * 2, ["The answer is 42.", "No idea, sorry."])
    assert scores[0] != scores[1]
    assert rm([long_prompt], ["The answer is 42."]) == pytest.approx([float(scores[0])])
