"""What the pair and generation evaluations share: the result type, prompt ids, JSON-safe values, the
choice of pair layout."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from alignkit.data.records import PreferencePair, Text
from alignkit.data.tokenize import prompt_messages
from alignkit.engine.exactness import layout_support
from alignkit.engine.pairs import Layout


@dataclass
class EvalResult:
    """``summary`` is JSON-serialisable; ``per_example`` has one flat dict per pair (or prompt)."""

    summary: dict[str, Any]
    per_example: list[dict[str, Any]] = field(default_factory=list)


def prompt_text(prompt: Text) -> str:
    """A prompt as plain text: strings unchanged, chat messages rendered ``Role: content`` per turn."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt_messages(prompt))


def prompt_id(record: PreferencePair | None, prompt: Text) -> str:
    """The record's ``task_id``/``prompt_id``/``id`` metadata, else a hash of the prompt text (content-addressed,
    so the same prompt gets the same id across runs, files and checkpoints)."""
    if record is not None:
        for key in ("task_id", "prompt_id", "id"):
            value = record.metadata.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return hashlib.sha256(prompt_text(prompt).encode("utf-8")).hexdigest()[:12]


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers turn the same text into the same ids (so one encoding serves both models)."""
    if a is b:
        return True
    return (type(a) is type(b) and a.get_vocab() == b.get_vocab()
            and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)
            and (a.bos_token_id, a.eos_token_id) == (b.bos_token_id, b.eos_token_id))


def pair_layout(model: nn.Module, pad_id: int) -> Layout:
    """``shared_prefix`` (each prompt fed once for both sides, packed rows) when the engine's exactness check
    passes for ``model``, else ``padded`` (one row per side, always exact). Sharing saves the prompt's second
    forward pass, which dominates multi-turn data such as HH-RLHF."""
    return "shared_prefix" if layout_support(model, pad_id) is None else "padded"


def clean(obj: Any) -> Any:
    """Recursively make ``obj`` JSON-safe: numpy scalars to python, NaN/inf to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj
