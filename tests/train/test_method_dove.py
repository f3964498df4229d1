"""DOVE: joint-pair data, joint log-probs, end-to-end training and resume on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.data import DataError
from alignkit.data.readers import load_joint_pairs
from alignkit.data.records import JointPair
from alignkit.data.synthetic import make_joint_pairs, make_synthetic, verify
from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.models import tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import BatchContext, build_method
from alignkit.train.methods.dove import DoveMethod, encode_joint_pair


def make_config(tmp_path, *overrides: str):
    base = [
        f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "batch_size=8", "max_steps=12", "eval_every=0", "save_every=0", "optim.learning_rate=3e-3",
        "optim.scheduler=constant", "data.synthetic.n_train=96", "data.synthetic.n_test=16",
        "data.max_eval_examples=16", "objectives=[{name: dove, beta: 0.1}]",
    ]
    return load_config(None, base + list(overrides))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_synthetic_joint_pairs_pair_a_passing_response_with_another_prompts_failing_one():
    pairs, _ = make_synthetic(60, 0, seed=2)
    joint = make_joint_pairs(pairs, seed=2, conditional_fraction=0.5)
    assert make_joint_pairs(pairs, seed=2, conditional_fraction=0.5) == joint  # deterministic
    assert 15 < sum(p.joint for p in joint) < 45
    for p in joint:
        assert verify(p.prompt_chosen, p.chosen) and not verify(p.prompt_rejected, p.rejected)
    only_joint = make_joint_pairs(pairs, seed=2, conditional_fraction=0.0)
    assert all(p.joint for p in only_joint)
    # every prompt is once a winner and once a loser, so prompt likelihood alone cannot separate them
    assert sorted(p.prompt_chosen for p in only_joint) == sorted(p.prompt_rejected for p in only_joint)


def test_joint_pair_reader_formats_and_errors(tmp_path):
    rows = [
        {"prompt_chosen": "Say hi.", "chosen": "Hi!", "prompt_rejected": "Count to 3.", "rejected": "1 2",
         "source": "x"},
        {"chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "c"}]},
        {"prompt": "Same?", "chosen": "yes", "rejected": "no"},
    ]
    pairs = load_joint_pairs(_write_jsonl(tmp_path / "ok.jsonl", rows), log=None)
    assert [p.joint for p in pairs] == [True, True, False]
    assert pairs[0].metadata == {"source": "x"}
    assert pairs[1].prompt_rejected[-1].content == "B?" and pairs[1].rejected[0].content == "c"
    assert pairs[2].prompt_chosen == pairs[2].prompt_rejected == "Same?"

    bad = [rows[0], {"prompt_chosen": "Say hi.", "chosen": "Hi!", "rejected": "1 2"},
           {"chosen": [{"role": "user", "content": "A?"}], "rejected": [{"role": "user", "content": "B?"},
                                                                      {"role": "assistant", "content": "c"}]},
           {"prompt_chosen": "Q", "chosen": "A", "prompt_rejected": "Q", "rejected": "A"}]
    path = _write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(DataError, match=r"line 2, field 'prompt_rejected': prompt_rejected is missing"):
        load_joint_pairs(path, log=None)
    kept = load_joint_pairs(path, on_invalid="skip", rejected_rows_path=tmp_path / "rejected.jsonl", log=None)
    assert len(kept) == 1
    errors = [json.loads(line)["error"] for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert "without a final assistant turn" in errors[1] and "identical" in errors[2]


def test_conditional_pair_loss_is_dpo_and_joint_pair_scores_the_prompts(tmp_path, tokenizer):
    """Prompt terms cancel for a shared prompt (DOVE = DPO there); a joint pair's log-probs include them."""
    model = tiny_llama(tokenizer)
    encoder = PromptEncoder(tokenizer)
    conditional = encode_joint_pair(encoder, JointPair(prompt_chosen="Say hi.", chosen="Hi!",
                                                       prompt_rejected="Say hi.", rejected="Go away."), 256, 128)
    joint = encode_joint_pair(encoder, JointPair(prompt_chosen="Say hi.", chosen="Hi!",
                                                 prompt_rejected="Count to 3.", rejected="1 2 3"), 256, 128)
    method = build_method(make_config(tmp_path))
    assert isinstance(method, DoveMethod) and method.score_prompt
    ref_model = tiny_llama(tokenizer, seed=5)

    class Ref:
        def logps(self, batch):
            return sequence_logps(ref_model, batch)

    ctx = BatchContext(model, Ref(), tokenizer.pad_token_id, 1024, None, torch.device("cpu"), tokenizer)
    logps, _ = method.joint_logps(ctx, [conditional, joint], [0, 1], None)

    def dpo_margin(policy, reference, rows, score_prompt):
        batch = collate(rows, tokenizer.pad_token_id, score_prompt)
        p, r = sequence_logps(policy, batch).logps, sequence_logps(reference, batch).logps
        return (p[0] - r[0]) - (p[1] - r[1])

    margin = (logps.chosen - logps.ref_chosen) - (logps.rejected - logps.ref_rejected)
    response_only = dpo_margin(model, ref_model, [(conditional.prompt_chosen, conditional.chosen),
                                                  (conditional.prompt_rejected, conditional.rejected)], False)
    torch.testing.assert_close(margin[0], response_only, atol=1e-4, rtol=0)
    prompt_len = len(joint.prompt_chosen) + len(joint.prompt_rejected)
    assert logps.chosen_tokens[1] + logps.rejected_tokens[1] == prompt_len - 2 + len(joint.chosen) + len(joint.rejected)


def test_dove_learns_joint_preferences_and_resumes_exactly(tmp_path, tokenizer):
    config = make_config(tmp_path / "a", "eval_every=12")
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    evals = [m for m in read_metrics(result.output_dir) if m["split"] == "eval"]
    before, after = evals[0], evals[-1]
    assert after["loss"] < before["loss"] - 0.2
    assert after["rewards/accuracies"] > 0.8 and after["accuracy/joint"] > 0.8
    assert 0 < after["joint_fraction"] < 1
    train_line = [m for m in read_metrics(result.output_dir) if m["split"] == "train"][-1]
    for key in ["loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "ranking/accuracy", "joint_fraction"]:
        assert key in train_line
    assert (result.final_dir / "model.safetensors").is_file()

    common = ["max_steps=4", "save_every=2", "batch_size=4"]
    straight = train(make_config(tmp_path / "b", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
                     log=lambda m: None)
    train(make_config(tmp_path / "c", *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
          log=lambda m: None, stop_after_steps=2)
    resumed = train(make_config(tmp_path / "c", *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_dove_with_precomputed_reference_matches_live(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    losses = {}
    for mode in ["copy", "precomputed"]:
        result = train(make_config(tmp_path / mode, f"reference={mode}", "max_steps=2",
                                   "data.synthetic.n_train=32"), model=tiny_llama(tokenizer),
                       tokenizer=tokenizer, log=lambda m: None)
        losses[mode] = [m["loss"] for m in read_metrics(result.output_dir) if m["split"] == "train"]
    assert losses["copy"] == pytest.approx(losses["precomputed"], abs=1e-5)
