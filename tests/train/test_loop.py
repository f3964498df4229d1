"""End-to-end training on tiny random models: learning, resume, references, checkpoints, guards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignkit.models import tiny_llama
from alignkit.train.checkpoint import CheckpointError
from alignkit.train.config import load_config
from alignkit.train.loop import TrainingDiverged, train


def make_config(tmp_path, *overrides: str):
    base = [
        f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "batch_size=8", "max_steps=30", "eval_every=0", "save_every=0", "optim.learning_rate=3e-3",
        "optim.scheduler=constant", "data.synthetic.n_train=240", "data.synthetic.n_test=32",
        "data.max_eval_examples=32",
    ]
    return load_config(None, base + list(overrides))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dpo_learns_the_synthetic_preferences(tmp_path, tokenizer):
    config = make_config(tmp_path, "objectives=[{name: dpo, beta: 0.1}]", "eval_every=30")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    evals = [m for m in read_metrics(result.output_dir) if m["split"] == "eval"]
    before, after = evals[0], evals[-1]
    assert before["step"] == 0 and after["step"] == 30
    assert after["loss"] < before["loss"] - 0.2
    assert after["rewards/accuracies"] > 0.8 > before["rewards/accuracies"]
    assert after["ranking/accuracy"] >= before["ranking/accuracy"]
    train_lines = [m for m in read_metrics(result.output_dir) if m["split"] == "train"]
    for key in ["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "logits/chosen", "logits/rejected", "grad_norm", "learning_rate", "tokens_per_second"]:
        assert key in train_lines[-1]
    assert (result.output_dir / "config.yaml").is_file()
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(result.final_dir)
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, tokenizer, lora):
    common = ["max_steps=6", "save_every=3", "batch_size=4", "gradient_accumulation_steps=2",
              "optim.scheduler=cosine", "optim.warmup_steps=2", f"lora.enabled={str(lora).lower()}",
              "lora.dropout=0.1"]
    straight = train(make_config(tmp_path / "a", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                     log=lambda m: None)
    first = make_config(tmp_path / "b", *common)
    train(first, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None, stop_after_steps=3)
    torch.manual_seed(1234)  # disturb the global RNG as a fresh process would
    resumed = train(make_config(tmp_path / "b", *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)
    a, b = _trainable(straight.model), _trainable(resumed.model)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    steps = [m["step"] for m in read_metrics(resumed.output_dir) if m["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_lora_with_adapter_disabled_reference(tmp_path, tokenizer):
    config = make_config(tmp_path, "lora.enabled=true", "reference=adapter", "max_steps=8",
                         "optim.learning_rate=1e-2", "lora.target_modules=[q_proj,v_proj]")
    model = tiny_llama(tokenizer)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(config, model=model, tokenizer=tokenizer, log=lambda m: None)
    lines = [m for m in read_metrics(result.output_dir) if m["split"] == "train"]
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert abs(lines[-1]["rewards/margins"]) > 1e-3
    base = result.model.get_base_model()
    for name, param in base.named_parameters():  # the base weights (= the reference) never moved
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            torch.testing.assert_close(param, initial[key])
    adapter = load_file(str(result.final_dir / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)


def test_precomputed_reference_equals_live_and_is_cached(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    losses = {}
    for i, mode in enumerate(["copy", "precomputed", "precomputed"]):
        config = make_config(tmp_path / f"{mode}-{i}", f"reference={mode}", "max_steps=4")
        result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
        losses.setdefault(mode, []).append([m["loss"] for m in read_metrics(result.output_dir)
                                            if m["split"] == "train"])
    assert losses["copy"][0] == pytest.approx(losses["precomputed"][0], abs=1e-5)
    assert losses["precomputed"][0] == losses["precomputed"][1]
    assert len(list((tmp_path / "cache" / "reference_logps").glob("*.safetensors"))) == 2  # train + eval


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        train(make_config(tmp_path, "resume=true"), model=tiny_llama(tokenizer), tokenizer=tokenizer,
              log=lambda m: None)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tokenizer):
    config = make_config(tmp_path, "max_steps=2", "save_every=2")
    train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None, stop_after_steps=2)
    weights = tmp_path / "run" / "checkpoints" / "step-000002" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="weights.safetensors is corrupt"):
        train(make_config(tmp_path, "max_steps=4", "resume=true"), model=tiny_llama(tokenizer),
              tokenizer=tokenizer, log=lambda m: None)
    (weights.parent / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer.pt is missing"):
        train(make_config(tmp_path, "max_steps=4", "resume=true"), model=tiny_llama(tokenizer),
              tokenizer=tokenizer, log=lambda m: None)


def test_nan_guard_names_the_step_and_keeps_last_checkpoint(tmp_path, tokenizer):
    model = tiny_llama(tokenizer)
    config = make_config(tmp_path, "max_steps=4", "save_every=1")
    calls = {"n": 0}

    def poison(module, args, output):
        if not module.training:  # exactness probes and the frozen reference copy (which has the hook too)
            return output
        calls["n"] += 1
        if calls["n"] > 2:  # the policy's training forwards: steps 1 and 2 are fine, step 3 diverges
            return output * float("nan")
        return output

    model.model.norm.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"at step \d+; last good checkpoint: .*step-00000\d"):
        train(config, model=model, tokenizer=tokenizer, log=lambda m: None)
    assert list((tmp_path / "run" / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("objective", ["ipo", "hinge", "robust_dpo", "rpo", "sft", "orpo", "simpo", "slic",
                                       "bco_pair", "kto", "bco"])
def test_every_objective_trains_end_to_end(tmp_path, tokenizer, objective):
    config = make_config(tmp_path, f"objectives=[{{name: {objective}}}]", "max_steps=12", "eval_every=12")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    evals = [m for m in read_metrics(result.output_dir) if m["split"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"]


def test_combined_objectives_log_each_loss(tmp_path, tokenizer):
    config = make_config(tmp_path, "objectives=[{name: dpo, beta: 0.1}, {name: sft, weight: 0.2}]", "max_steps=2")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    last = read_metrics(result.output_dir)[-1]
    assert last["loss"] == pytest.approx(last["loss/dpo"] + 0.2 * last["loss/sft"], rel=1e-5)


def test_bco_running_mean_survives_resume(tmp_path, tokenizer):
    common = ["objectives=[{name: bco}]", "max_steps=4", "save_every=2", "batch_size=4"]
    straight = train(make_config(tmp_path / "a", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                     log=lambda m: None)
    train(make_config(tmp_path / "b", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None,
          stop_after_steps=2)
    saved = json.loads((tmp_path / "b" / "run" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert saved["trainer"]["objective_state"]["bco"]["delta_count"] == 2 * 4
    torch.manual_seed(1234)
    resumed = train(make_config(tmp_path / "b", *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)
    # δ continues from the checkpoint: every reward of all four steps is in the running mean, as uninterrupted
    assert resumed.state.objective_state["bco"]["delta_count"] == 4 * 4
    assert resumed.state.objective_state["bco"]["delta_mean"] == \
        pytest.approx(straight.state.objective_state["bco"]["delta_mean"], abs=1e-12)
    deltas = [[m["delta"] for m in read_metrics(run.output_dir) if m["split"] == "train"]
              for run in (straight, resumed)]
    assert deltas[0] == deltas[1] and len(deltas[0]) == 4


@pytest.mark.parametrize(("lora", "kind"), [(False, "activation_checkpointing"), (True, "activation_checkpointing"),
                                            (True, "selective_checkpointing")])
def test_activation_checkpointing_gives_the_same_training(tmp_path, tokenizer, lora, kind, monkeypatch):
    # checkpointed models keep the dense mask; the unchecked run must too for bit-level equality (per-segment
    # attention reorders float sums, tested against the dense mask in tests/engine/test_segments.py)
    monkeypatch.setenv("ALIGNKIT_ATTENTION", "dense")
    common = ["max_steps=3", "batch_size=4", f"lora.enabled={str(lora).lower()}"]
    runs = {}
    for checkpointed in (False, True):
        config = make_config(tmp_path / str(checkpointed), *common, f"{kind}={str(checkpointed).lower()}")
        torch.manual_seed(0)
        result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
        decoder = result.model.get_base_model() if lora else result.model
        assert decoder.is_activation_checkpointing == checkpointed
        runs[checkpointed] = (_trainable(result.model), read_metrics(result.output_dir))
    (plain, plain_metrics), (ckpt, ckpt_metrics) = runs[False], runs[True]
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)
    losses = [m["loss"] for m in plain_metrics if m["split"] == "train"]
    assert losses == pytest.approx([m["loss"] for m in ckpt_metrics if m["split"] == "train"], abs=1e-6)
