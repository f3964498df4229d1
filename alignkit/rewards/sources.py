"""Reward and preference sources for methods that score their own samples (GRAO, online IPO / DPO).

Two interfaces, both batched over plain-text (prompt, response) items:

* a **reward source** has ``rewards(prompts, responses) -> Tensor[N]`` (one scalar per response);
* a **preference source** has ``preferences(prompts, first, second) -> Tensor[N]``, p = P(first ≻ second).

Every reward source is also a preference source: :class:`RewardModel` through Bradley-Terry,
p = σ(r(y) − r(y')); :class:`VerifierReward` (rewards 1/0) as p = (1 + r(y) − r(y'))/2, i.e. 1, ½ or 0.
:class:`JudgePreference` only compares, asking an LM judge in both orders and symmetrising
(METHODS.md §2b: a pairwise model is order-sensitive).

:func:`build_source` turns a config value into a source: ``"verifier"``, ``{type: reward_model, model:
<dir or hub id>}``, ``{type: judge, model: <builtin name, dir or hub id>}``, or ``"package.module:attr"``
(a source object, class or factory; keyword arguments from the mapping are passed to a class or factory).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from alignkit.data.records import Text
from alignkit.data.tokenize import to_messages


@runtime_checkable
class PreferenceSource(Protocol):
    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        """P(first ≻ second | prompt) per item, float [N] in [0, 1]."""


@runtime_checkable
class RewardSource(PreferenceSource, Protocol):
    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        """Scalar reward per item, float [N]."""

    def preference_from_rewards(self, first: Tensor, second: Tensor) -> Tensor:
        """P(first ≻ second) from the two responses' rewards."""


def _check_lengths(*columns: Sequence) -> None:
    if len({len(c) for c in columns}) > 1:
        raise ValueError(f"prompts and responses differ in length: {[len(c) for c in columns]}")


def prompt_text(prompt: Text) -> str:
    """A prompt as one string (the last user turn of a conversation): what verifiers and judges read."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in to_messages(prompt) if m["role"] == "user"]
    return users[-1]["content"] if users else to_messages(prompt)[-1]["content"]


def _preferences_from_rewards(source, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]
                              ) -> Tensor:
    _check_lengths(prompts, first, second)
    both = source.rewards(list(prompts) * 2, list(first) + list(second))  # one batched scoring call
    n = len(prompts)
    return source.preference_from_rewards(both[:n], both[n:])


class VerifierReward:
    """The synthetic tasks' programmatic verifiers (``alignkit.data.synthetic.verify``): reward 1 or 0.

    Prompts from no synthetic family raise, unless ``unknown_reward`` is given (then they get it).
    """

    def __init__(self, unknown_reward: float | None = None):
        self.unknown_reward = unknown_reward

    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        from alignkit.data.synthetic import verify

        _check_lengths(prompts, responses)
        out = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                out.append(1.0 if verify(prompt_text(prompt), response) else 0.0)
            except ValueError:
                if self.unknown_reward is None:
                    raise
                out.append(float(self.unknown_reward))
        return torch.tensor(out, dtype=torch.float32)

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return _preferences_from_rewards(self, prompts, first, second)

    @staticmethod
    def preference_from_rewards(first: Tensor, second: Tensor) -> Tensor:
        # Rewards are 0/1, so this is 1 when only `first` passes, 0 when only `second` does, ½ on a tie.
        return (1.0 + first.float() - second.float()).clamp(0.0, 2.0) / 2


class RewardModel:
    """A Hugging Face sequence-classification reward model: r(x, y) is the logit of its single label.

    The text is the reward model's own chat template applied to [user prompt, assistant response] when its
    tokenizer has one, else ``prompt + "\\n\\n" + response``. Preferences are Bradley-Terry,
    p = σ((r(y) − r(y'))/temperature).
    """

    def __init__(self, model, tokenizer=None, batch_size: int = 16, max_length: int = 1024,
                 temperature: float = 1.0, device: str | torch.device | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if isinstance(model, str):
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(model)
            model = AutoModelForSequenceClassification.from_pretrained(model)
        if tokenizer is None:
            raise ValueError("RewardModel: pass the tokenizer along with a loaded model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:  # sequence classifiers pool at the last non-pad token
            model.config.pad_token_id = tokenizer.pad_token_id
        if device is not None:
            model.to(device)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size, self.max_length, self.temperature = batch_size, max_length, temperature

    def render(self, prompt: Text, response: str) -> str:
        messages = to_messages(prompt) + [{"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt_text(prompt) + "\n\n" + response

    @torch.no_grad()
    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        _check_lengths(prompts, responses)
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            # A rendered template already holds BOS and role markers.
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length, add_special_tokens=False)
            logits = self.model(input_ids=enc["input_ids"].to(device),
                                attention_mask=enc["attention_mask"].to(device)).logits
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return _preferences_from_rewards(self, prompts, first, second)

    def preference_from_rewards(self, first: Tensor, second: Tensor) -> Tensor:
        return torch.sigmoid((first.float() - second.float()) / self.temperature)


class JudgePreference:
    """Pairwise preferences from a judge (``alignkit.eval.judge.LMJudge`` or any ``(prompt, a, b) -> P(a)``),
    asked in both orders: p = ½·[J(a, b) + 1 − J(b, a)]."""

    def __init__(self, judge):
        self.judge = judge

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        from alignkit.eval.judge import judge_pair

        _check_lengths(prompts, first, second)
        return torch.tensor([judge_pair(self.judge, prompt_text(p), a, b)
                             for p, a, b in zip(prompts, first, second, strict=True)], dtype=torch.float32)


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"source {path!r}: expected 'verifier', a mapping with 'type', or 'package.module:attr'")
    return getattr(importlib.import_module(module), attr)


def build_source(spec: Any, device: str | torch.device | None = None, log=print) -> PreferenceSource:
    """A reward or preference source from a config value (see module docstring); objects pass through."""
    if spec is None:
        spec = "verifier"
    if not isinstance(spec, str | dict):
        if not isinstance(spec, PreferenceSource):
            raise ValueError(f"{spec!r} has no preferences() method")
        return spec
    options = dict(spec) if isinstance(spec, dict) else {"type": spec}
    kind = options.pop("type", None)
    if kind is None:
        raise ValueError(f"source {spec!r}: give its 'type' (verifier, reward_model, judge or module:attr)")
    if kind == "verifier":
        return VerifierReward(**options)
    if kind == "reward_model":
        model = options.pop("model", None)
        if model is None:
            raise ValueError("reward_model source: give 'model' (a directory or hub id)")
        return RewardModel(str(model), device=device, **options)
    if kind == "judge":
        from alignkit.eval.judge import LMJudge
        from alignkit.models import load_model

        name = options.pop("model", None)
        if name is None:
            raise ValueError("judge source: give 'model' (a builtin name, directory or hub id)")
        model, tokenizer = load_model(str(name), device=str(device) if device is not None else "auto", log=log)
        model.eval().requires_grad_(False)
        return JudgePreference(LMJudge(model, tokenizer, **options))
    target = _import(kind)
    # A class has a `preferences` attribute too, so test for it before the instance check.
    source = target(**options) if isinstance(target, type) or not isinstance(target, PreferenceSource) else target
    if not isinstance(source, PreferenceSource):
        raise ValueError(f"source {kind!r} gave {source!r}, which has no preferences() method")
    return source


__all__ = ["JudgePreference", "PreferenceSource", "RewardModel", "RewardSource", "VerifierReward",
           "build_source", "prompt_text"]
