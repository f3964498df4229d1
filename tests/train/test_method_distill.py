"""DCKD / ADPA (Gao et al., ICLR 2025, arXiv 2502.17927) end to end on tiny random Llamas, and the teacher
top-k cache.

Teachers are tiny Llamas with their (tied) embeddings scaled up, so their next-token distributions are
peaked rather than uniform over 49k tokens and the KL and advantage terms carry signal.
"""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import response_logits, sequence_logps
from alignkit.models import tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import build_method
from alignkit.train.methods.distill import main
from alignkit.train.methods.teacher_cache import load_teacher_topk, precompute_teacher_topk, teacher_topk


def peaked_llama(tokenizer, seed: int, scale: float = 10.0):
    model = tiny_llama(tokenizer, seed=seed)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(scale)
    return model


@pytest.fixture
def teachers(tmp_path, tokenizer):
    """(DPO teacher dir, reference teacher dir)."""
    dirs = []
    for seed, name in ((1, "dpo_teacher"), (2, "ref_teacher")):
        model = peaked_llama(tokenizer, seed)
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    return dirs


def make_config(tmp_path, objective: str, *overrides: str):
    base = [
        f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "batch_size=4", "max_steps=6", "eval_every=6", "save_every=0", "optim.learning_rate=3e-3",
        "optim.scheduler=constant", "data.synthetic.n_train=24", "data.synthetic.n_test=8",
        "data.max_eval_examples=8", f"objectives=[{objective}]",
    ]
    return load_config(None, base + list(overrides))


def read_metrics(run_dir, split: str):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["split"] == split]


def dckd(teacher, cache, **weights) -> str:
    weights = weights or {"sft_weight": 0.1, "distill_weight": 1.0, "chosen_weight": 1.0, "rejected_weight": 1.0}
    extra = ", ".join(f"{k}: {v}" for k, v in weights.items())
    return f"{{name: dckd, teacher: '{teacher}', teacher_cache: '{cache}', top_k: 8, {extra}}}"


def test_response_logits_are_aligned_with_the_log_prob_engine(tokenizer, tiny_model):
    rows = [([1, 5, 9, 13], [20, 21, 2]), ([1, 7], [30, 2])]
    out = response_logits(tiny_model, rows, tokenizer.pad_token_id)
    assert out.mask.tolist() == [[True, True, True], [True, True, False]]
    assert out.labels.tolist() == [[20, 21, 2], [30, 2, 0]]
    token_lp = out.logits.log_softmax(-1).gather(-1, out.labels[..., None]).squeeze(-1)
    summed = torch.where(out.mask, token_lp, 0.0).sum(1)
    engine = sequence_logps(tiny_model, collate(rows, tokenizer.pad_token_id)).logps
    torch.testing.assert_close(summed, engine, atol=1e-4, rtol=1e-4)


def test_teacher_topk_file_round_trip_and_stale_rows(tmp_path, tokenizer):
    teacher = peaked_llama(tokenizer, 1)
    rows = [([1, 5, 9], [20, 21, 2]), ([1, 7], [30, 2])]
    path = precompute_teacher_topk(teacher, rows, 4, tmp_path / "t.safetensors", tokenizer.pad_token_id, log=None)
    table = load_teacher_topk(path, rows)
    assert table.lengths.tolist() == [3, 2] and table.idx.shape == (5, 4)
    full = response_logits(teacher, rows, tokenizer.pad_token_id).logits.log_softmax(-1)
    top = full[0, 1].topk(4)
    assert table.idx[1].tolist() == top.indices.tolist()
    torch.testing.assert_close(table.logprobs[1], top.values)
    idx, logprobs = table.gather([1, 0], 3, torch.device("cpu"))
    assert idx.shape == (2, 3, 4) and torch.isinf(logprobs[0, 2]).all()  # row 1 has 2 tokens, padded to 3
    assert teacher_topk(teacher, rows[1:], 4, tokenizer.pad_token_id).idx.tolist() == table.idx[3:].tolist()
    with pytest.raises(ValueError, match="different data"):
        load_teacher_topk(path, [([1, 5, 9], [20, 22, 2]), ([1, 7], [30, 2])])


def test_dckd_distills_the_teacher_and_caches_its_top_k(tmp_path, tokenizer, teachers):
    logs: list[str] = []
    config = make_config(tmp_path, dckd(teachers[0], tmp_path / "cache"))
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=logs.append)
    evals = read_metrics(result.output_dir, "eval")
    before, after = evals[0], evals[-1]
    assert after["loss/chosen-fkl"] < 0.95 * before["loss/chosen-fkl"]
    assert after["loss/rejected-fkl"] < 0.95 * before["loss/rejected-fkl"]
    assert after["loss"] < 0.95 * before["loss"]
    last = read_metrics(result.output_dir, "train")[-1]
    for key in ["loss/chosen-sft", "loss/chosen-fkl", "loss/rejected-fkl", "logps/chosen",
                "ranking/accuracy_normalized"]:
        assert key in last
    assert sum("cached at" in m for m in logs) == 2  # train and eval tables, one teacher load
    logs.clear()
    train(make_config(tmp_path / "again", dckd(teachers[0], tmp_path / "cache"), "max_steps=1"),
          model=tiny_llama(tokenizer), tokenizer=tokenizer, log=logs.append)
    assert sum("reused" in m for m in logs) == 2 and not any("loading the teacher" in m for m in logs)


def test_dckd_resume_and_precompute_command(tmp_path, tokenizer, teachers):
    objective = dckd(teachers[0], tmp_path / "cache", sft_weight=0.5, distill_weight=1.0, chosen_weight=1.0)
    common = ["max_steps=4", "save_every=2", "eval_every=0"]
    config_path = tmp_path / "dckd.yaml"
    config_path.write_text(f"objectives: [{objective}]\n")
    main(["precompute", "-c", str(config_path), *make_config_overrides(tmp_path / "a", common),
          f"model.name={teachers[1]}"])
    logs: list[str] = []
    straight = train(make_config(tmp_path / "a", objective, *common), model=tiny_llama(tokenizer),
                     tokenizer=tokenizer, log=logs.append)
    assert not any("loading the teacher" in m for m in logs)  # the precompute command filled the cache
    train(make_config(tmp_path / "b", objective, *common), model=tiny_llama(tokenizer), tokenizer=tokenizer,
          log=lambda m: None, stop_after_steps=2)
    resumed = train(make_config(tmp_path / "b", objective, *common, "resume=true"), model=tiny_llama(tokenizer),
                    tokenizer=tokenizer, log=lambda m: None)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def make_config_overrides(tmp_path, extra: list[str]) -> list[str]:
    return [f"output_dir={tmp_path / 'run'}", "model.device=cpu", "data.synthetic.n_train=24",
            "data.synthetic.n_test=8", "data.max_eval_examples=8", *extra]


def adpa(teachers, **options) -> str:
    items = {"adpa_weight": 1.0, "max_new_tokens": 6, "top_k": 8, **options}
    extra = ", ".join(f"{k}: {v}" for k, v in items.items())
    return f"{{name: adpa, teacher: '{teachers[0]}', ref_teacher: '{teachers[1]}', {extra}}}"


def test_adpa_raises_the_expected_teacher_advantage(tmp_path, tokenizer, teachers):
    # The student starts as the reference teacher, as an SFT student of the same family would.
    config = make_config(tmp_path, adpa(teachers, sft_weight=0.01))
    result = train(config, model=peaked_llama(tokenizer, 2), tokenizer=tokenizer, log=lambda m: None)
    evals = read_metrics(result.output_dir, "eval")
    assert evals[-1]["loss/adpa"] < evals[0]["loss/adpa"] - 0.05
    for key in ["loss/adpa", "loss/chosen-sft", "logps/sampled", "advantage/sampled_tokens", "response_length"]:
        assert key in read_metrics(result.output_dir, "train")[-1]
    assert (result.output_dir / "adpa" / "train.safetensors").is_file()


def test_adpa_resume_reuses_the_student_samples(tmp_path, tokenizer, teachers):
    objective = adpa(teachers, importance_sampling="true", kl_penalty_weight=0.01)
    common = ["max_steps=4", "save_every=2", "eval_every=0"]
    straight = train(make_config(tmp_path / "a", objective, *common), model=peaked_llama(tokenizer, 2),
                     tokenizer=tokenizer, log=lambda m: None)
    assert "loss/importance_weight" in read_metrics(straight.output_dir, "train")[-1]
    train(make_config(tmp_path / "b", objective, *common), model=peaked_llama(tokenizer, 2), tokenizer=tokenizer,
          log=lambda m: None, stop_after_steps=2)
    samples = tmp_path / "b" / "run" / "adpa" / "train.safetensors"
    written = samples.stat().st_mtime_ns
    logs: list[str] = []
    resumed = train(make_config(tmp_path / "b", objective, *common, "resume=true"),
                    model=peaked_llama(tokenizer, 2), tokenizer=tokenizer, log=logs.append)
    assert samples.stat().st_mtime_ns == written and not any("sampled" in m for m in logs)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    samples.unlink()
    with pytest.raises(RuntimeError, match="resumed ADPA run"):
        train(make_config(tmp_path / "b", objective, *common, "resume=true", "max_steps=6"),
              model=peaked_llama(tokenizer, 2), tokenizer=tokenizer, log=lambda m: None)


def test_distill_config_errors(tmp_path, teachers):
    with pytest.raises(ValueError, match="weight 0"):
        build_method(make_config(tmp_path, f"{{name: dckd, teacher: '{teachers[0]}'}}"))
    with pytest.raises(ValueError, match="set teacher"):
        build_method(make_config(tmp_path, "{name: dckd, sft_weight: 1.0}"))
    with pytest.raises(ValueError, match="weight 0"):
        build_method(make_config(tmp_path, "{name: adpa, teacher: a, ref_teacher: b, top_k: 3}"))
    with pytest.raises(ValueError, match="set ref_teacher"):
        build_method(make_config(tmp_path, "{name: adpa, teacher: a, adpa_weight: 1.0}"))
