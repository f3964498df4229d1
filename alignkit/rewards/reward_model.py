"""The one reward-model scorer: a Hugging Face sequence-classification model, read at the last token.

Evaluation (``alignkit eval --reward-model``: mean reward, win rates) and the online methods (a reward or
Bradley-Terry preference source) both use :class:`RewardModel`:

* **text**: the conversation [system, prompt turns, assistant response] in the reward model's own chat
  template, the format it was trained on (plain ``Role: content`` turns when it has none);
* **score**: with one label its logit; with two, the log-odds ``logit[1] − logit[0]`` of the positive class;
* **truncation**: the score is read at the last token, so an input longer than ``max_length`` loses tokens
  from its start (the prompt, from the left), never the end of the response;
* **batches** are left-padded, so every row's last real token sits in the last column;
* **preferences** are Bradley-Terry (Bradley & Terry, "Rank Analysis of Incomplete Block Designs",
  Biometrika 1952): p = σ((r(y) − r(y'))/temperature).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.data.records import Text
from alignkit.data.tokenize import prompt_messages
from alignkit.engine.generation import left_pad
from alignkit.engine.layouts import collate
from alignkit.rewards.base import check_lengths, preferences_from_rewards


def load_classifier(spec: str, dtype: str | torch.dtype = "float32") -> tuple[nn.Module, Any]:
    """An ``AutoModelForSequenceClassification`` and its tokenizer from a local directory or hub id, frozen
    and in eval mode. A checkpoint without a trained classification head (a causal LM loads "fine" with a
    freshly initialised one: random rewards) is refused."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.models import resolve_dtype

    path = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not path.is_dir():
        raise FileNotFoundError(f"reward model directory {spec!r} not found")
    location = str(path) if path.is_dir() else spec
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(location, dtype=resolve_dtype(dtype),
                                                                         output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load reward model {spec!r} as a sequence-classification model: {err}"
                         ) from err
    missing = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
    if missing:
        raise ValueError(f"reward model {spec!r} has no trained classification head (missing or mismatched "
                         f"weights: {', '.join(map(str, missing[:3]))}); give a sequence-classification "
                         "checkpoint")
    return model.eval().requires_grad_(False), tokenizer


class RewardModel:
    """r(x, y) from a sequence-classification model (see the module docstring); higher is better.

    ``model`` is a loaded model (then pass its ``tokenizer``) or a directory / hub id. ``device`` moves the
    model (``"auto"``: CUDA when present); None leaves it where it is. Calling the scorer,
    ``scorer(prompts, responses)``, gives plain floats (what ``alignkit.eval`` expects); :meth:`rewards` a
    tensor (the reward-source interface).
    """

    def __init__(self, model: nn.Module | str, tokenizer: Any = None, batch_size: int = 16, max_length: int = 1024,
                 temperature: float = 1.0, device: str | torch.device | None = None, system: str | None = None,
                 dtype: str | torch.dtype = "float32") -> None:
        if batch_size < 1 or max_length < 1 or not temperature > 0:
            raise ValueError(f"reward model: batch_size and max_length must be >= 1 and temperature > 0, got "
                             f"{batch_size}, {max_length}, {temperature}")
        if isinstance(model, str):
            model, loaded_tokenizer = load_classifier(model, dtype)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        if tokenizer is None:
            raise ValueError("RewardModel: pass the tokenizer along with a loaded model")
        labels = int(getattr(model.config, "num_labels", 1))
        if labels not in (1, 2):
            raise ValueError(f"reward model has {labels} labels; expected 1 (a scalar reward) or 2")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            # sequence classifiers find each row's last real token through pad_token_id
            model.config.pad_token_id = tokenizer.pad_token_id
        if device is not None:
            from alignkit.models import resolve_device

            model.to(resolve_device(device) if isinstance(device, str) else device)
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.temperature, self.system = batch_size, max_length, temperature, system

    def render(self, prompt: Text, response: str) -> str:
        """The text the reward model reads."""
        messages = prompt_messages(prompt, self.system) + [{"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages).rstrip()

    def encode(self, prompt: Text, response: str) -> list[int]:
        """Token ids of :meth:`render`, cut from the left to ``max_length`` (the end is where the score is)."""
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        # a rendered chat template already holds BOS and role markers
        ids = self.tokenizer(self.render(prompt, response), add_special_tokens=not templated).input_ids
        return ids[-self.max_length:]

    @torch.no_grad()
    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        check_lengths(prompts, responses)
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(encoded), self.batch_size):
                rows = collate([([], ids) for ids in encoded[start:start + self.batch_size]],
                               self.tokenizer.pad_token_id)
                ids, mask = left_pad(rows.input_ids, rows.attention_mask)
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                out.append((logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]).cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, prompts: Sequence[Text], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.rewards(prompts, responses).tolist()

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return preferences_from_rewards(self, prompts, first, second)

    def preference_from_rewards(self, first: Tensor, second: Tensor) -> Tensor:
        return torch.sigmoid((first.float() - second.float()) / self.temperature)


def load_reward_model(spec: str, device: str | torch.device | None = "auto", dtype: str | torch.dtype = "float32",
                      batch_size: int = 8, max_length: int = 1024) -> RewardModel:
    """A :class:`RewardModel` from a local directory or hub id of an ``AutoModelForSequenceClassification``."""
    return RewardModel(spec, batch_size=batch_size, max_length=max_length, device=device, dtype=dtype)
