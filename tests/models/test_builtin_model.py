"""The real embedded SmolLM2: conversion from GGUF, its cache, and a sensible answer (slow)."""

import shutil
import time

import pytest
import torch

from alignkit.models import load_model
from alignkit.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, converted_dir, ensure_converted

pytestmark = pytest.mark.slow


def test_interrupted_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    import transformers

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_converted(BUILTIN_MODELS[DEFAULT_MODEL], log=lambda m: None)
    target = converted_dir(BUILTIN_MODELS[DEFAULT_MODEL])
    assert not target.exists()
    leftovers = list(target.parent.iterdir()) if target.parent.exists() else []
    assert leftovers == []  # the temporary directory is removed too


def test_conversion_clears_quantization_markers_and_saves(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    start = time.perf_counter()
    model, tokenizer = load_model(DEFAULT_MODEL, device="cpu", log=lambda m: None)
    first = time.perf_counter() - start
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
    model.save_pretrained(tmp_path / "resaved")  # refused while the GGUF markers are set
    start = time.perf_counter()
    load_model(DEFAULT_MODEL, device="cpu", log=lambda m: None)
    print(f"conversion+load {first:.1f} s, cached load {time.perf_counter() - start:.2f} s")
    shutil.rmtree(tmp_path / "resaved")


def test_builtin_answers_capital_of_france():
    from alignkit.engine.generation import generate

    model, tokenizer = load_model(DEFAULT_MODEL, device="cpu", log=lambda m: None)
    (reply,) = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=24)
    assert "Paris" in reply
