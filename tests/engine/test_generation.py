"""Batched generation: reproducible sampling that leaves the caller's random state and model mode alone."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.generation import SamplingParams, decode_response, generate, sample_ids

PROMPTS = ["Say hello.", "What is 2 + 2? Answer with just the number.", "Name a colour."]


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone(tiny_model, tokenizer):
    tiny_model.train()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=5, do_sample=True, seed=7, batch_size=2)
    assert torch.equal(torch.rand(3), expected_next)  # generation did not consume or reseed the global stream
    assert tiny_model.training  # mode restored
    assert generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=5, do_sample=True, seed=7, batch_size=2) == first
    assert len(first) == len(PROMPTS)


def test_training_mode_is_restored_when_generation_fails(tiny_model, tokenizer, monkeypatch):
    tiny_model.train()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny_model, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=2)
    assert tiny_model.training


def test_greedy_equals_transformers_generate(tiny_model, tokenizer):
    ours = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    encoder = PromptEncoder(tokenizer)
    for prompt, text in zip(PROMPTS, ours, strict=True):
        ids = torch.tensor([encoder.encode_prompt(prompt)])
        out = tiny_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert decode_response(tokenizer, out[0, ids.shape[1]:].tolist()) == text


def test_n_samples_per_prompt_share_one_prefill(tiny_model, tokenizer):
    encoder = PromptEncoder(tokenizer)
    prompts = [encoder.encode_prompt(p) for p in PROMPTS]
    widths = []
    original = tiny_model.forward

    def counting(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    tiny_model.forward = counting
    try:
        out = sample_ids(tiny_model, prompts, SamplingParams(max_new_tokens=4, do_sample=True, seed=3), n=5,
                         eos_token_id=-1, pad_token_id=tokenizer.pad_token_id, batch_size=8)
    finally:
        del tiny_model.forward
    assert widths[0][0] == len(prompts)  # the prefill ran once per prompt, not once per sample
    assert all(shape == (len(prompts) * 5, 1) for shape in widths[1:])
    assert [len(r) for r in out.responses] == [5, 5, 5]
    assert all(len(sample) == 4 for r in out.responses for sample in r)
    assert len({tuple(s) for s in out.responses[0]}) > 1  # independent samples, not copies


def test_n_samples_match_one_at_a_time_greedy(tiny_model, tokenizer):
    encoder = PromptEncoder(tokenizer)
    prompts = [encoder.encode_prompt(p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=5)
    many = sample_ids(tiny_model, prompts, params, n=3, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id)
    one = sample_ids(tiny_model, prompts, params, n=1, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id)
    for rs, (single,) in zip(many.responses, one.responses, strict=True):
        assert rs == [single] * 3


def test_stop_strings_cut_text_and_ids(tiny_model, tokenizer):
    encoder = PromptEncoder(tokenizer)
    prompts = [encoder.encode_prompt(p) for p in PROMPTS]
    free = sample_ids(tiny_model, prompts, SamplingParams(max_new_tokens=8), eos_token_id=-1,
                      pad_token_id=tokenizer.pad_token_id)
    stop = tokenizer.decode(free.responses[0][0][3:5], skip_special_tokens=True)  # completed by token 4 or 5
    assert stop
    out = sample_ids(tiny_model, prompts, SamplingParams(max_new_tokens=8, stop=(stop,)), eos_token_id=-1,
                     pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer)
    assert out.stopped[0] == ["stop"]
    ids = out.responses[0][0]
    assert ids == free.responses[0][0][:len(ids)] and len(ids) < 8
    assert stop in tokenizer.decode(ids, skip_special_tokens=True)
    assert stop not in tokenizer.decode(ids[:-1], skip_special_tokens=True)
    assert stop not in decode_response(tokenizer, ids, (stop,))


def test_sampling_params_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(do_sample=True, temperature=0.0)
