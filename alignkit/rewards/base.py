"""The two interfaces every reward or preference source implements, and the helpers they share.

* a **reward source** has ``rewards(prompts, responses) -> Tensor[N]`` (one scalar per response);
* a **preference source** has ``preferences(prompts, first, second) -> Tensor[N]``, p = P(first ≻ second).

Both are batched over plain-text (prompt, response) items; a prompt is text or chat messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

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


def check_lengths(*columns: Sequence) -> None:
    if len({len(c) for c in columns}) > 1:
        raise ValueError(f"prompts and responses differ in length: {[len(c) for c in columns]}")


def prompt_text(prompt: Text) -> str:
    """A prompt as one string (the last user turn of a conversation): what verifiers and judges read."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in to_messages(prompt) if m["role"] == "user"]
    return users[-1]["content"] if users else to_messages(prompt)[-1]["content"]


def preferences_from_rewards(source: RewardSource, prompts: Sequence[Text], first: Sequence[str],
                             second: Sequence[str]) -> Tensor:
    """``source.preference_from_rewards`` of both responses' rewards, scored in one batched call."""
    check_lengths(prompts, first, second)
    both = source.rewards(list(prompts) * 2, list(first) + list(second))
    n = len(prompts)
    return source.preference_from_rewards(both[:n], both[n:])
