"""PAL on the policy's own hidden states (``--encoder policy:MODEL``): the embedding is the causal LM's last hidden
state at the response's last token, L2-normalised; end to end on a tiny Llama saved to a directory."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.data.tokenize import PromptEncoder
from alignkit.decoding.rewards import build_reward
from alignkit.models import tiny_llama
from alignkit.rewards.pal_data import Embedder

PROMPTS = ["What is 2 + 2?", "Tell me about the sea.", "What is 2 + 2?", "Say hello."]
RESPONSES = ["4.", "The sea is large and salty and covers most of the planet.", "It is four, of course.", "Hello!"]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("policy") / "tiny"
    tiny_llama(tokenizer, seed=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def direct_embedding(model, tokenizer, prompt: str, response: str) -> torch.Tensor:
    """One unpadded forward of [prompt | response] (as training encodes them), last position, unit norm."""
    encoder = PromptEncoder(tokenizer)
    ids = encoder.encode_prompt(prompt) + encoder.encode_response(prompt, response)
    assert ids[-1] == tokenizer.eos_token_id  # the response's last token is its end-of-sequence token
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    return torch.nn.functional.normalize(hidden.float(), dim=0)


def test_policy_embedding_is_the_last_hidden_state_at_the_responses_last_token(policy_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    embedder = Embedder(f"policy:{policy_dir}", batch_size=3)  # a padded batch of 3, then a batch of 1
    got = embedder(PROMPTS, RESPONSES)
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    assert got.shape == (4, model.config.hidden_size) and got.dtype == torch.float32
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        torch.testing.assert_close(got[i], direct_embedding(model, tokenizer, prompt, response), atol=2e-5, rtol=1e-4)
    # Different responses (to the same prompt, too) give different points; the same item is cached, not re-encoded.
    cosine = got @ got.T
    assert (cosine - torch.eye(4)).abs().max() < 0.999 and cosine[0, 2] < 0.999
    cached = len(embedder._cache)
    again = embedder([PROMPTS[1], PROMPTS[0]], [RESPONSES[1], RESPONSES[0]])
    assert len(embedder._cache) == cached
    assert torch.equal(again, got[[1, 0]])


def test_pal_on_tiny_policy_states_separates_user_groups_end_to_end(policy_dir, tmp_path):
    pytest.importorskip("safetensors")
    # Thousands of tiny matmuls: one thread is ~20x faster than two on a loaded 2-core machine (same numbers).
    torch.set_num_threads(1)
    runner = CliRunner()
    data = tmp_path / "users"
    result = runner.invoke(app, ["reward", "make-users", str(data), "--users", "16", "--new-users", "4",
                                 "--train-pairs", "40", "--test-pairs", "16", "--new-user-pairs", "24"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "pal"
    result = runner.invoke(app, ["reward", "pal-train", str(data / "train.jsonl"), "--out", str(out), "--encoder",
                                 f"policy:{policy_dir}", "--prototypes", "4", "--epochs", "40", "--no-progress"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"] == f"policy:{policy_dir}" and config["input_dim"] == 64  # the tiny model's width
    result = runner.invoke(app, ["reward", "pal-eval", str(out), "--data", str(data / "test.jsonl"), "--report",
                                 str(tmp_path / "seen.json")])
    assert result.exit_code == 0, result.output
    seen = json.loads((tmp_path / "seen.json").read_text())["seen_users"]
    # Four groups want opposite things, so one reward model is near chance; PAL's per-user ideal points are not.
    assert seen["pal"]["ci_low"] > 0.8 and seen["pal"]["users"] == 16
    assert abs(seen["bradley_terry"]["mean"] - 0.5) < 0.15
    result = runner.invoke(app, ["reward", "pal-eval", str(out), "--data", str(data / "new_users.jsonl"), "--shots",
                                 "8", "--repeats", "2", "--test-pairs", "12", "--report", str(tmp_path / "new.json")])
    assert result.exit_code == 0, result.output
    new = json.loads((tmp_path / "new.json").read_text())["new_users"]
    assert new["pal"]["8"]["mean"] > 0.8  # 8 labels place a new user (frozen shared parts, tiny-model states)
    # As a reward: users of opposite length groups rank the held-out length pairs oppositely.
    pairs = [r for r in map(json.loads, (data / "test.jsonl").read_text().splitlines()) if r["axis"] == "length"]
    prompts = [r["prompt"] for r in pairs]
    shorter = [min(r["chosen"], r["rejected"], key=len) for r in pairs]
    longer = [max(r["chosen"], r["rejected"], key=len) for r in pairs]
    short_wins = {}
    for user in ("user000", "user002"):  # short-formal and detailed-formal
        reward = build_reward([f"pal:{out}@{user}"])
        short_wins[user] = sum(a > b for a, b in zip(reward.score(prompts, shorter), reward.score(prompts, longer),
                                                     strict=True)) / len(pairs)
    assert short_wins["user000"] > 0.8 and short_wins["user002"] < 0.2
