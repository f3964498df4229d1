"""PoFT: SFT data, aligned-model scores computed once and cached, training and resume on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.data import DataError
from alignkit.data.readers import load_sft_examples
from alignkit.data.tokenize import PromptEncoder, encode_example
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.models import tiny_llama
from alignkit.train.config import load_config
from alignkit.train.loop import train
from alignkit.train.methods import build_method


@pytest.fixture
def aligned_dir(tmp_path, tokenizer):
    """A tiny "aligned model" on disk: another random Llama with the same tokenizer."""
    path = tmp_path / "aligned"
    tiny_llama(tokenizer, seed=7).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_config(tmp_path, aligned, *overrides: str):
    base = [
        f"output_dir={tmp_path / 'run'}", "model.device=cpu", "progress=false", "lora.enabled=false",
        "batch_size=8", "max_steps=8", "eval_every=0", "save_every=0", "optim.learning_rate=3e-3",
        "optim.scheduler=constant", "data.synthetic.n_train=48", "data.synthetic.n_test=16",
        "data.max_eval_examples=16", f"objectives=[{{name: poft, aligned_models: [{aligned}]}}]",
    ]
    return load_config(None, base + list(overrides))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_reader(tmp_path):
    rows = [{"prompt": "Hi", "response": "Hello"}, {"prompt": "Hi", "completion": "Hey", "id": 3},
            {"prompt": "Hi", "chosen": "Hello there", "rejected": "Go away"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_sft_examples(path, log=None)
    assert [e.response for e in examples] == ["Hello", "Hey", "Hello there"]
    assert examples[1].metadata == {"id": 3}
    path.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    with pytest.raises(DataError, match="line 1, field 'response': response is missing"):
        load_sft_examples(path, log=None)


def test_aligned_scores_are_the_aligned_models_mean_token_logps_and_cached(tmp_path, tokenizer, aligned_dir,
                                                                           monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    second = tmp_path / "aligned2"
    tiny_llama(tokenizer, seed=8).save_pretrained(second)
    tokenizer.save_pretrained(second)
    config = make_config(tmp_path, f"{aligned_dir}, {second}", "data.synthetic.n_train=8", "data.synthetic.n_test=4")
    messages: list[str] = []
    method = build_method(config)
    train_items, eval_items = method.load(tokenizer, tmp_path, messages.append)
    assert sum("computed 12 rows" in m for m in messages) == 2

    # by hand: each aligned model's mean per-token log-prob of the response, averaged over models
    from alignkit.data.synthetic import make_synthetic

    pairs, _ = make_synthetic(8, 4, seed=0)
    encoder = PromptEncoder(tokenizer)
    expected = []
    for pair in pairs[:2]:
        e = encode_example(encoder, pair.prompt, pair.chosen, None, 512, 256)
        batch = collate([(e.prompt, e.response)], tokenizer.pad_token_id)
        scores = [(out.logps / out.tokens).item() for out in
                  (sequence_logps(tiny_llama(tokenizer, seed=s), batch) for s in (7, 8))]
        expected.append(sum(scores) / 2)
    assert [item.aligned_score for item in train_items[:2]] == pytest.approx(expected, abs=1e-4)

    messages.clear()
    again, _ = build_method(config).load(tokenizer, tmp_path, messages.append)
    assert sum("reused cache" in m for m in messages) == 2
    assert [i.aligned_score for i in again] == [i.aligned_score for i in train_items]


def test_poft_trains_end_to_end_and_resumes_exactly(tmp_path, tokenizer, aligned_dir, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    straight = train(make_config(tmp_path / "a", aligned_dir, "eval_every=8", "save_every=4"),
                     model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    evals = [m for m in read_metrics(straight.output_dir) if m["split"] == "eval"]
    before, after = evals[0], evals[-1]
    assert after["loss"] < before["loss"] - 0.2
    assert after["nll"] < before["nll"] and after["s_theta"] > before["s_theta"]
    assert after["weight"] < before["weight"]  # examples the target now fits better than the aligned model
    assert after["s_aligned"] == pytest.approx(before["s_aligned"])
    train(make_config(tmp_path / "b", aligned_dir, "eval_every=8", "save_every=4"), model=tiny_llama(tokenizer),
          tokenizer=tokenizer, log=lambda m: None, stop_after_steps=4)
    resumed = train(make_config(tmp_path / "b", aligned_dir, "eval_every=8", "save_every=4", "resume=true"),
                    model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_poft_config_errors():
    with pytest.raises(ValueError, match="aligned_models: must list"):
        build_method(load_config(None, ["objectives=[{name: poft}]"]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_method(load_config(None, ["objectives=[{name: poft, aligned_models: [x], temperature: 0}]"]))
