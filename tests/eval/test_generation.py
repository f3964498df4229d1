"""Batched generation: reproducible sampling that leaves the caller's random state and model mode alone."""

from __future__ import annotations

import pytest
import torch

from alignkit.eval.generation import generate

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

    monkeypatch.setattr(tiny_model, "generate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=2)
    assert tiny_model.training
