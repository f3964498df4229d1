"""Shared fixtures: the builtin tokenizer (offline, cached) and tiny random Llama models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HH_RLHF = SHARED_DATA / "hh-rlhf-harmless-test-first1000.jsonl.gz"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    from alignkit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    from alignkit.models import tiny_llama

    return tiny_llama(tokenizer)


def require_hh_rlhf() -> Path:
    if not HH_RLHF.is_file():
        pytest.skip(f"real HH-RLHF sample not found at {HH_RLHF} (the ../shared folder is absent)")
    return HH_RLHF
