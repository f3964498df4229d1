"""Shared helpers: a small scenario file written per test, and a tiny target model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

MINI = {
    "name": "mini",
    "system": "You talk to a {tier} user.",
    "conditions": [{"name": "free", "vars": {"tier": "free"}}, {"name": "paid", "vars": {"tier": "paid"}}],
    "items": [{"id": "a", "question": "What is 2+2?", "answer": "4"},
              {"id": "b", "question": "Name a colour.", "answer": "red"}],
    "turns": ["{question}"],
    "generation": {"max_new_tokens": 4, "do_sample": False, "batch_size": 2},
    "measures": [{"name": "said_answer", "kind": "contains", "any_of": ["{answer}"]}],
}


@pytest.fixture
def write_scenario(tmp_path):
    def write(tree: dict, name: str = "mini.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def target(tokenizer, tiny_model):
    from alignkit.scenarios.run import Speaker

    return Speaker("tiny", tiny_model, tokenizer)
