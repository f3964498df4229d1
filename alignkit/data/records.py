"""Typed records for every kind of human feedback alignkit trains on.

A prompt or response is either a plain string or a list of chat messages ``{"role", "content"}``.
A prompt given as messages ends with a user turn; a response given as messages holds the assistant turn(s).

Kinds read by :func:`alignkit.data.readers.load_records`: ``pair``, ``binary``, ``judgment`` (CUT), ``ranked``.
Kinds with their own loaders in :mod:`alignkit.data.readers`: ``joint`` (:class:`JointPair`, DOVE) and
``sft`` (:class:`SFTExample`, PoFT); MAH-DPO's preference vectors are ``pair`` records carrying
``metadata["preferences"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    content: str


Text = str | list[Message]


def text_is_empty(value: Text) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not value or all(not m.content.strip() for m in value)


def text_length(value: Text) -> int:
    """Characters of content, for length limits."""
    return len(value) if isinstance(value, str) else sum(len(m.content) for m in value)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text
    system: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Text) -> Text:
        if text_is_empty(value):
            raise ValueError("prompt is empty")
        return value


def _non_empty(value: Text, name: str) -> Text:
    if text_is_empty(value):
        raise ValueError(f"{name} is empty")
    return value


class PreferencePair(_Record):
    """(prompt, chosen, rejected): the chosen response is preferred.

    ``metadata`` may carry annotator ``agreement`` (P(chosen > rejected), used as α by idealized ranking
    accuracy), ``user_id``, per-objective ``scores`` and anything else the source provides.
    """

    kind: Literal["pair"] = "pair"
    chosen: Text
    rejected: Text

    @field_validator("chosen", "rejected")
    @classmethod
    def _responses_not_empty(cls, value: Text, info) -> Text:
        return _non_empty(value, info.field_name)

    @model_validator(mode="after")
    def _chosen_differs(self) -> PreferencePair:
        if self.chosen == self.rejected:
            raise ValueError("chosen is identical to rejected")
        return self


class BinaryFeedback(_Record):
    """(prompt, completion, label): thumbs up (True, desirable) or down (False)."""

    kind: Literal["binary"] = "binary"
    completion: Text
    label: bool

    @field_validator("completion")
    @classmethod
    def _completion_not_empty(cls, value: Text) -> Text:
        return _non_empty(value, "completion")


class Judgment(_Record):
    """(prompt, response, judgment): a natural-language critique of the response (CUT).

    An empty/None judgment means the response was judged fine.
    """

    kind: Literal["judgment"] = "judgment"
    response: Text
    judgment: str | None = None
    score: float | None = None

    @field_validator("response")
    @classmethod
    def _response_not_empty(cls, value: Text) -> Text:
        return _non_empty(value, "response")


class RankedGroup(_Record):
    """One prompt with N >= 2 responses and a score per response (higher is better).

    Ranks can be given instead of scores (``ranks``: 1 is best); they are turned into scores.
    """

    kind: Literal["ranked"] = "ranked"
    responses: list[Text]
    scores: list[float] | None = None
    ranks: list[int] | None = None

    @model_validator(mode="after")
    def _check_group(self) -> RankedGroup:
        if len(self.responses) < 2:
            raise ValueError("responses: a ranked group needs at least 2 responses")
        for i, response in enumerate(self.responses):
            if text_is_empty(response):
                raise ValueError(f"responses[{i}] is empty")
        if self.scores is None and self.ranks is None:
            raise ValueError("scores: a ranked group needs scores or ranks")
        if self.scores is None:
            self.scores = [-float(r) for r in self.ranks]
        if len(self.scores) != len(self.responses):
            raise ValueError(f"scores: {len(self.scores)} scores for {len(self.responses)} responses")
        return self

    def pair_indices(self) -> Iterator[tuple[int, int]]:
        """``(better, worse)`` response indices of every pair with a strict score difference and distinct
        responses; nothing when all the scores tie."""
        assert self.scores is not None
        for i, (ri, si) in enumerate(zip(self.responses, self.scores, strict=True)):
            for j in range(i + 1, len(self.responses)):
                rj, sj = self.responses[j], self.scores[j]
                if si == sj or ri == rj:
                    continue
                yield (i, j) if si > sj else (j, i)

    def to_pairs(self) -> list[PreferencePair]:
        """Every ordered pair with a strict score difference, best first."""
        return [PreferencePair(prompt=self.prompt, chosen=self.responses[better],
                               rejected=self.responses[worse], system=self.system, metadata=dict(self.metadata))
                for better, worse in self.pair_indices()]


class JointPair(BaseModel):
    """``(prompt_chosen, chosen) ≻ (prompt_rejected, rejected)``: a preference between two responses to possibly
    different prompts, the data of DOVE (Bansal et al., "Comparing Bad Apples to Good Oranges: Aligning Large
    Language Models via Joint Preference Optimization", arXiv:2404.00530). Equal prompts make it an ordinary
    (conditional) pair."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["joint"] = "joint"
    prompt_chosen: Text
    chosen: Text
    prompt_rejected: Text
    rejected: Text
    system: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt_chosen", "chosen", "prompt_rejected", "rejected")
    @classmethod
    def _not_empty(cls, value: Text, info) -> Text:
        return _non_empty(value, info.field_name)

    @model_validator(mode="after")
    def _sides_differ(self) -> JointPair:
        if self.prompt_chosen == self.prompt_rejected and self.chosen == self.rejected:
            raise ValueError("chosen is identical to rejected (same prompt and response)")
        return self

    @property
    def joint(self) -> bool:
        return self.prompt_chosen != self.prompt_rejected


class SFTExample(BaseModel):
    """(prompt, response): one demonstration, the data of PoFT (Fan et al., "Favoring Target Model Over Aligned
    LLMs", AAAI 2025, arXiv:2412.12865)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["sft"] = "sft"
    prompt: Text
    response: Text
    system: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


Record = PreferencePair | BinaryFeedback | Judgment | RankedGroup
RecordKind = Literal["pair", "binary", "judgment", "ranked"]
RECORD_TYPES: dict[str, type[_Record]] = {
    "pair": PreferencePair,
    "binary": BinaryFeedback,
    "judgment": Judgment,
    "ranked": RankedGroup,
}
