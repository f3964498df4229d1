"""GRAO (Wang et al., arXiv 2508.07750) end to end on tiny random Llamas; the toy preference is "shorter is better"
(see ``test_method_online``)."""

from __future__ import annotations

import pytest
import torch

from alignkit.train.loop import train
from alignkit.train.methods import build_method
from alignkit.train.methods.grao import k3_kl
from tests.train.test_method_online import SHORT, eos_prone_llama, make_config, read_metrics


def grao(**options) -> str:
    items = {"name": "grao", "group_size": 4, "max_new_tokens": 8, "reward": f"'{SHORT}'", **options}
    return "{" + ", ".join(f"{k}: {v}" for k, v in items.items()) + "}"


def test_grao_raises_the_group_reward(tmp_path, tokenizer):
    config = make_config(tmp_path, grao(), "eval_every=6")
    result = train(config, model=eos_prone_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    evals = read_metrics(result.output_dir, "eval")
    before, after = evals[0], evals[-1]
    assert after["reward_mean"] > before["reward_mean"] + 1.0
    assert after["response_length"] < before["response_length"] - 1.5
    last = read_metrics(result.output_dir, "train")[-1]
    for key in ["loss", "reward_mean", "reward_std", "reference_beats_all_fraction", "zero_variance_fraction",
                "loss/exploration", "loss/imitation", "loss/alignment", "kl", "response_length",
                "logps/reference_answer", "reference_reward_mean"]:
        assert key in last


def test_grao_kl_penalty_with_lora_and_resume(tmp_path, tokenizer):
    objective = grao(kl_coef=0.5, max_new_tokens=6)
    common = ["max_steps=4", "save_every=2", "lora.enabled=true", "reference=adapter",
              "lora.target_modules=[q_proj,v_proj]", "optim.learning_rate=1e-2"]
    straight = train(make_config(tmp_path / "a", objective, *common), model=eos_prone_llama(tokenizer),
                     tokenizer=tokenizer, log=lambda m: None)
    lines = read_metrics(straight.output_dir, "train")
    assert lines[0]["kl_k3"] == pytest.approx(0.0, abs=1e-6)  # the adapter starts as a no-op
    assert lines[-1]["kl_k3"] > 0
    train(make_config(tmp_path / "b", objective, *common), model=eos_prone_llama(tokenizer), tokenizer=tokenizer,
          log=lambda m: None, stop_after_steps=2)
    torch.manual_seed(1234)
    resumed = train(make_config(tmp_path / "b", objective, *common, "resume=true"),
                    model=eos_prone_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def test_grao_runs_without_a_reference(tmp_path, tokenizer):
    config = make_config(tmp_path, grao(group_size=3, max_new_tokens=4), "reference=none", "max_steps=1")
    method = build_method(config)
    assert not method.needs_reference
    result = train(config, model=eos_prone_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    assert "kl" not in read_metrics(result.output_dir, "train")[-1]
    with pytest.raises(ValueError, match="reference"):  # the KL penalty needs one
        from alignkit.train.loop import resolve_reference_mode

        bad = make_config(tmp_path, grao(kl_coef=0.1), "reference=none")
        resolve_reference_mode(bad, build_method(bad))


def test_k3_kl_by_hand():
    policy = torch.tensor([[-1.0, -2.0, 0.0]])
    reference = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    r = [-0.5, 1.0]
    expected = sum(torch.exp(torch.tensor(x)).item() - x - 1 for x in r) / 2
    assert k3_kl(policy, reference, mask).item() == pytest.approx(expected, rel=1e-6)


def test_grao_defaults_are_the_papers(tmp_path):
    params = build_method(make_config(tmp_path, "{name: grao}")).params
    assert (params.group_size, params.beta, params.lam, params.include_reference, params.kl_coef) == \
        (8, 0.5, 0.6, False, 0.0)


def test_grao_config_errors(tmp_path):
    with pytest.raises(ValueError, match="group_size"):
        build_method(make_config(tmp_path, grao(group_size=1)))
    with pytest.raises(ValueError, match="unknown parameter 'lamda'"):
        build_method(make_config(tmp_path, grao(lamda=0.5)))
    with pytest.raises(ValueError, match="beta must be >= 0"):
        build_method(make_config(tmp_path, grao(beta=-0.5)))


def test_grao_and_online_ipo_take_a_reward_model_directory_and_a_summed_list(tmp_path, tokenizer):
    """A reward model is a reward source by path, and a list of sources is their weighted sum: the first
    step samples the same responses whatever the reward, so the logged mean rewards must add up."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    rm = tmp_path / "rm"
    LlamaForSequenceClassification(config).save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    spec = f"{{type: reward_model, model: '{rm}'}}"
    runs = {}
    for name, reward in [("rm", spec), ("short", f"'{SHORT}'"), ("sum", f"[{spec}, {{type: '{SHORT}', weight: 2.0}}]")]:
        cfg = make_config(tmp_path / name, grao(reward=reward), "max_steps=1")
        result = train(cfg, model=eos_prone_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
        runs[name] = read_metrics(result.output_dir, "train")[-1]["reward_mean"]
    assert runs["rm"] != pytest.approx(runs["short"], abs=1e-3)
    assert runs["sum"] == pytest.approx(runs["rm"] + 2.0 * runs["short"], abs=1e-4)
    cfg = make_config(tmp_path / "ipo", f"{{name: online_ipo, max_new_tokens: 8, preference: {spec}}}", "max_steps=1")
    result = train(cfg, model=eos_prone_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    assert read_metrics(result.output_dir, "train")[-1]["loss"] > 0
