"""MAH-DPO: vector preferences, heads that specialise, checkpoint/resume of the wrapped model, saved heads."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.data import DataError
from alignkit.data.convert import parse_preferences
from alignkit.data.readers import load_vector_pairs
from alignkit.data.synthetic import make_synthetic, make_vector_pairs, write_jsonl
from alignkit.engine.layouts import collate
from alignkit.models import tiny_llama
from alignkit.objectives.mah_dpo import MultiHeadLM
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import build_method
from alignkit.train.methods.mah_dpo import HEADS_FILE, head_logps, head_weights, load_multihead


def make_config(tmp_path, *overrides: str):
    base = [
        f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "batch_size=8", "max_steps=10", "eval_every=0", "save_every=0", "optim.learning_rate=3e-3",
        "optim.scheduler=constant", "data.synthetic.n_train=64", "data.synthetic.n_test=16",
        "data.max_eval_examples=16", "objectives=[{name: mah_dpo, beta: 0.1}]",
    ]
    return load_config(None, base + list(overrides))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _opposed_data(tmp_path, n_train=64, n_test=16):
    """Every pair labelled +1 on "a" and −1 on "b": the two heads must learn opposite rankings."""
    train_pairs, test_pairs = make_synthetic(n_train, n_test, seed=0)
    paths = []
    for name, pairs in (("train", train_pairs), ("test", test_pairs)):
        tagged = [p.model_copy(update={"metadata": {"preferences": {"a": 1, "b": -1}}}) for p in pairs]
        paths.append(write_jsonl(tagged, tmp_path / f"{name}.jsonl"))
    return paths


def test_preference_vectors_are_validated(tmp_path):
    assert parse_preferences({"helpful": 1, "harmless": -1, "honest": 0}, None) == \
        {"helpful": 1, "harmless": -1, "honest": 0}
    assert parse_preferences('{"a": 1.0}', ["a", "b"]) == {"a": 1}
    for bad, message in [({"a": 2}, "must be \\+1"), ({"a": True}, "must be \\+1"), ({"c": 1}, "not one of the heads"),
                         ({"a": 0}, "holds no preference"), ([1, -1], "must be an object")]:
        with pytest.raises(ValueError, match=message):
            parse_preferences(bad, ["a", "b"])
    rows = [{"prompt": "Q", "chosen": "x", "rejected": "y", "preferences": {"a": 1}},
            {"prompt": "Q", "chosen": "x", "rejected": "y"},
            {"prompt": "Q", "chosen": "x", "rejected": "y", "preferences": {"a": 5}}]
    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="line 2, field 'preferences': preferences is missing"):
        load_vector_pairs(path, log=None)
    kept = load_vector_pairs(path, on_invalid="skip", log=None)
    assert len(kept) == 1 and kept[0].metadata["preferences"] == {"a": 1}


def test_synthetic_vectors_come_from_per_family_objectives():
    pairs = make_vector_pairs(make_synthetic(80, 0, seed=0)[0])
    for pair in pairs:
        vector, family = pair.metadata["preferences"], pair.metadata["family"]
        assert vector["safe"] == (1 if family == "refusal" else 0)
        assert vector["correct"] == (0 if family == "refusal" else 1)
        assert vector["brief"] in (-1, 0, 1)


def test_configured_heads_pick_synthetic_objectives(tmp_path, tokenizer):
    method = build_method(make_config(tmp_path, "objectives=[{name: mah_dpo, heads: [safe, correct]}]"))
    train_items, _ = method.load(tokenizer, tmp_path, lambda m: None)
    assert method.head_names == ["safe", "correct"]
    assert all(len(i.preference) == 2 and any(i.preference) for i in train_items)
    assert {tuple(i.preference) for i in train_items} == {(1, 0), (0, 1)}
    method = build_method(make_config(tmp_path, "objectives=[{name: mah_dpo, heads: [safe, kind]}]"))
    with pytest.raises(ValueError, match=r"heads \['kind'\] would get no labels"):
        method.load(tokenizer, tmp_path, lambda m: None)


def test_heads_specialise_on_opposite_preferences(tmp_path, tokenizer):
    train_path, test_path = _opposed_data(tmp_path)
    config = make_config(tmp_path, f"data.train={train_path}", f"data.eval={test_path}", "eval_every=10",
                         "objectives=[{name: mah_dpo, beta: 0.1, heads: [a, b]}]")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    evals = [m for m in read_metrics(result.output_dir) if m["split"] == "eval"]
    before, after = evals[0], evals[-1]
    assert before["a/rewards/margins"] == 0 and before["b/rewards/margins"] == 0
    assert after["loss"] < before["loss"] - 0.2
    assert after["a/rewards/accuracies"] > 0.8 and after["b/rewards/accuracies"] > 0.8
    assert after["a/count"] == after["b/count"] == 16 and after["objectives_present"] == 2

    # head a now ranks chosen over rejected, head b the other way round, on the same backbone
    model = result.model
    assert isinstance(model, MultiHeadLM)
    from alignkit.train.methods.mah_dpo import MahDpoMethod

    method = MahDpoMethod(config)
    _, items = method.load(tokenizer, tmp_path, lambda m: None)
    rows = [(i.prompt, i.chosen) for i in items] + [(i.prompt, i.rejected) for i in items]
    with torch.no_grad():
        logps = head_logps(model.lm, model.heads, collate(rows, tokenizer.pad_token_id))
    n = len(items)
    initial = tiny_llama(tokenizer)
    with torch.no_grad():
        ref = head_logps(initial, [initial.lm_head], collate(rows, tokenizer.pad_token_id))[0]
    margin = (logps[:, :n] - ref[:n]) - (logps[:, n:] - ref[n:])
    assert (margin[0] > 0).float().mean() > 0.8 and (margin[1] < 0).float().mean() > 0.8

    # the final directory: head 0 in the model, the others beside it, names included
    assert (result.final_dir / HEADS_FILE).is_file()
    loaded, _ = load_multihead(result.final_dir, log=lambda m: None)
    assert loaded.head_names == ["a", "b"]
    batch = collate(rows[:4], tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(head_logps(loaded.lm, loaded.heads, batch), head_logps(model.lm, model.heads, batch))
        hidden = loaded.lm.model(input_ids=batch.input_ids).last_hidden_state
        with loaded.ensemble_head(head_weights(loaded, {"b": 1.0})):
            only_b = loaded.lm(input_ids=batch.input_ids).logits
        torch.testing.assert_close(only_b, loaded.extra_heads[0](hidden))
        with loaded.ensemble_head([0.25, 0.75]):
            mixed = loaded.lm(input_ids=batch.input_ids).logits
        torch.testing.assert_close(mixed, 0.25 * loaded.lm.lm_head(hidden) + 0.75 * loaded.extra_heads[0](hidden))
    with pytest.raises(ValueError, match="unknown heads"):
        head_weights(loaded, {"c": 1.0})


def test_checkpoint_and_resume_through_the_generic_loop(tmp_path, tokenizer):
    common = ["max_steps=4", "save_every=2", "batch_size=4", "objectives=[{name: mah_dpo, perturbation_scale: 0.01}]"]
    straight = train(make_config(tmp_path / "a", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                     log=lambda m: None)
    first = train(make_config(tmp_path / "b", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                  log=lambda m: None, stop_after_steps=2)
    lines = [m for m in read_metrics(first.output_dir) if m["split"] == "train"]
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # perturbed reference heads = initial ones
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "b" / "run" / "checkpoints" / "step-000002" / "weights.safetensors"))
    assert "extra_heads.0.weight" in saved and "extra_heads.1.weight" in saved  # heads: brief, correct, safe
    resumed = train(make_config(tmp_path / "b", *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)
    a, b = dict(straight.model.named_parameters()), dict(resumed.model.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)


def test_lora_and_precomputed_reference(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    losses = {}
    for mode in ["copy", "precomputed"]:
        config = make_config(tmp_path / mode, f"reference={mode}", "max_steps=2", "data.synthetic.n_train=16")
        result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
        losses[mode] = [m["loss"] for m in read_metrics(result.output_dir) if m["split"] == "train"]
    assert losses["copy"] == pytest.approx(losses["precomputed"], abs=1e-5)
    config = make_config(tmp_path / "lora", "lora.enabled=true", "reference=adapter", "max_steps=2",
                         "lora.target_modules=[q_proj,v_proj]", "lora.merge_on_save=true", "data.synthetic.n_train=16")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert {"extra_heads.0.weight", "extra_heads.1.weight"} <= trainable
    assert all("lora_" in n or n.startswith("extra_heads") for n in trainable)
    assert (result.final_dir / "model.safetensors").is_file() and (result.final_dir / HEADS_FILE).is_file()
    loaded, _ = load_multihead(result.final_dir, log=lambda m: None)
    assert loaded.num_heads == 3
    with pytest.raises(ValueError, match="precomputed"):
        build_method(load_config(None, ["reference=precomputed",
                                        "objectives=[{name: mah_dpo, perturbation_scale: 0.01}]"]))
