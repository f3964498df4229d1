"""Data for the methods that need more than (prompt, chosen, rejected), and its synthetic derivations.

* **DOVE** trains on *joint* pairs ``(prompt_chosen, chosen) ≻ (prompt_rejected, rejected)`` whose prompts may
  differ (:class:`JointPair`, :func:`load_joint_pairs`, :func:`make_joint_pairs`).
* **CUT** trains on judgments (:class:`alignkit.data.records.Judgment`, read with ``load_records(kind="judgment")``);
  :func:`make_judgments` derives them from the synthetic verifiers.
* **PoFT** trains on plain SFT examples (:class:`SFTExample`, :func:`load_sft_examples`).
* **MAH-DPO** trains on pairs carrying a preference per objective in ``metadata["preferences"]``
  (:func:`load_vector_pairs`, :func:`make_vector_pairs`).

The readers go through the data layer's row iteration (``alignkit.data.readers``), so every format it reads
(JSONL, JSON, CSV, parquet, saved datasets, the Hub) works here too, and every bad row is a
:class:`DataError` naming file, line/row and field, or is skipped with ``on_invalid="skip"``.
Every synthetic derivation is deterministic in its inputs and seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignkit.data import readers
from alignkit.data.errors import DataError
from alignkit.data.records import Judgment, Message, PreferencePair, Text, text_is_empty
from alignkit.data.synthetic import FAMILIES, family_of, verify

R = TypeVar("R")
OnInvalid = Literal["error", "skip"]


# ------------------------------------------------------------------------------------------ generic reading


def read_rows(
    source: str | Path,
    build: Callable[[dict[str, Any], readers._Ctx], R],
    *,
    column_map: Mapping[str, str] | None = None,
    on_invalid: OnInvalid = "error",
    rejected_rows_path: Path | None = None,
    split: str = "train",
    log: Callable[[str], None] | None = print,
) -> list[R]:
    """``build`` every row of ``source`` into a record, with the same error/skip policy as ``load_records``."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    name = str(source)
    fmt = readers._detect_format(source, None)
    records: list[R] = []
    rejected: list[dict] = []
    n_read = 0
    for item in readers._iter_rows(source, fmt, split):
        n_read += 1
        try:
            if item.error is not None:
                raise item.error
            assert item.data is not None
            records.append(build(item.data, readers._Ctx(name, item.row, item.unit, dict(column_map or {}))))
        except DataError as exc:
            if on_invalid == "error":
                raise
            rejected.append({"file": name, "row": item.row, "field": exc.field, "error": str(exc),
                             "raw": item.raw if item.raw is not None else item.data})
    if n_read == 0:
        raise DataError("is empty: it holds no rows", file=name)
    if rejected:
        if rejected_rows_path is not None:
            readers._write_rejected(Path(rejected_rows_path), rejected)
        if log is not None:
            log(f"skipped {len(rejected)} of {n_read} rows of {name} as invalid")
        if not records:
            raise DataError(f"all {n_read} rows are invalid; first: {rejected[0]['error']}", file=name)
    return records


def _columns(data: dict[str, Any], fields: Sequence[str], column_map: Mapping[str, str]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our fields present in the row, the other columns as metadata)."""
    values = {f: data[column_map.get(f, f)] for f in fields if column_map.get(f, f) in data}
    used = {column_map.get(f, f) for f in values}
    metadata = {k: v for k, v in data.items() if k not in used}
    if isinstance(metadata.get("metadata"), dict):
        metadata = {**metadata.pop("metadata"), **metadata}
    return values, metadata


def _check_column_map(column_map: Mapping[str, str] | None, fields: Sequence[str], what: str) -> None:
    unknown = sorted(set(column_map or {}) - set(fields))
    if unknown:
        raise ValueError(f"column_map has fields {unknown} that {what} rows do not have; their fields are "
                         f"{list(fields)}")


def split_and_cap(train: list[R], evaluation: list[R] | None, eval_fraction: float, seed: int,
                  max_train: int | None, max_eval: int | None) -> tuple[list[R], list[R]]:
    """Hold out ``eval_fraction`` of train when there is no eval set (as ``alignkit.train.data`` does), then cap."""
    if evaluation is None:
        shuffled = train[:]
        random.Random(seed).shuffle(shuffled)
        n_eval = max(1, int(len(shuffled) * eval_fraction))
        evaluation, train = shuffled[:n_eval], shuffled[n_eval:]
    if max_train:
        train = train[:max_train]
    if max_eval:
        evaluation = evaluation[:max_eval]
    return train, evaluation


# ------------------------------------------------------------------------------------------ DOVE: joint pairs


class JointPair(BaseModel):
    """``(prompt_chosen, chosen) ≻ (prompt_rejected, rejected)``; equal prompts make it a conditional pair."""

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
        if text_is_empty(value):
            raise ValueError(f"{info.field_name} is empty")
        return value

    @model_validator(mode="after")
    def _sides_differ(self) -> JointPair:
        if self.prompt_chosen == self.prompt_rejected and self.chosen == self.rejected:
            raise ValueError("chosen is identical to rejected (same prompt and response)")
        return self

    @property
    def joint(self) -> bool:
        return self.prompt_chosen != self.prompt_rejected


JOINT_FIELDS = ("prompt_chosen", "prompt_rejected", "chosen", "rejected", "prompt", "system")


def _split_conversation(messages: list[Message], name: str, ctx: readers._Ctx) -> tuple[list[Message],
                                                                                      list[Message]]:
    """A whole conversation as (prompt turns ending with a user turn, the trailing assistant turns)."""
    end = len(messages)
    while end and messages[end - 1].role in ("assistant", "tool"):
        end -= 1
    if end == len(messages):
        raise ctx.error(f"{name} is a conversation without a final assistant turn to score", name)
    if end == 0 or messages[end - 1].role != "user":
        raise ctx.error(f"{name}: the turns before the final assistant turn(s) must end with a user turn", name)
    response = messages[end:]
    if text_is_empty(response):
        raise ctx.error(f"{name} is empty (its final assistant turn has no text)", name)
    return messages[:end], response


def _joint_pair(data: dict[str, Any], ctx: readers._Ctx) -> JointPair:
    values, metadata = _columns(data, JOINT_FIELDS, ctx.column_map)
    system = values.get("system")
    if system is not None and not isinstance(system, str):
        raise ctx.error("system must be a string", "system")
    if "prompt_chosen" in values or "prompt_rejected" in values:
        sides = {}
        for side in ("chosen", "rejected"):
            prompt_values = {"prompt": readers._require(values, f"prompt_{side}", ctx)}
            try:
                sides[f"prompt_{side}"] = readers._prompt(prompt_values, ctx)
            except DataError as exc:
                raise ctx.error(exc.message, f"prompt_{side}") from exc
            sides[side] = readers._response(readers._require(values, side, ctx), side, ctx)
    elif values.get("prompt") is None and readers._is_conversation(values.get("chosen")) \
            and readers._is_conversation(values.get("rejected")):
        sides = {}
        for side in ("chosen", "rejected"):
            messages = readers._text(values[side], side, ctx)
            assert isinstance(messages, list)
            sides[f"prompt_{side}"], sides[side] = _split_conversation(messages, side, ctx)
    else:  # an ordinary pair (any format the pair reader accepts) is a conditional joint pair
        pair_row = {f: values[f] for f in ("prompt", "chosen", "rejected", "system") if f in values}
        record = readers._build_record(pair_row, "pair", {}, 100_000, file=ctx.file, row=ctx.row, unit=ctx.unit)
        assert isinstance(record, PreferencePair)
        sides = {"prompt_chosen": record.prompt, "prompt_rejected": record.prompt, "chosen": record.chosen,
                 "rejected": record.rejected}
    try:
        return JointPair(**sides, system=system or None, metadata=metadata)
    except ValidationError as exc:
        raise ctx.error(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from exc


def load_joint_pairs(source: str | Path, *, column_map: Mapping[str, str] | None = None,
                     on_invalid: OnInvalid = "error", rejected_rows_path: Path | None = None,
                     log: Callable[[str], None] | None = print) -> list[JointPair]:
    """Joint preference pairs. Each row is one of:

    * ``prompt_chosen``, ``chosen``, ``prompt_rejected``, ``rejected`` (strings or message lists);
    * ``chosen`` and ``rejected`` as two whole conversations, each ending with its assistant turn(s), whose
      user turns may differ;
    * any ordinary preference pair (``prompt``/``chosen``/``rejected``, HH-RLHF transcripts...): a
      conditional pair, the special case of equal prompts.
    """
    _check_column_map(column_map, JOINT_FIELDS, "joint-pair")
    return read_rows(source, _joint_pair, column_map=column_map, on_invalid=on_invalid,
                     rejected_rows_path=rejected_rows_path, log=log)


def make_joint_pairs(pairs: Sequence[PreferencePair], seed: int = 0, conditional_fraction: float = 0.5
                     ) -> list[JointPair]:
    """Joint pairs from synthetic pairs: pair i's (prompt, chosen), which passes its verifier, beats another
    pair's (prompt, rejected), which fails its own, so the two instructions differ.

    Partners follow one random cyclic shift of the pairs, so every prompt is the winner's once and the loser's
    once: the prompts' own likelihoods cannot separate winners from losers. ``conditional_fraction`` of the
    pairs stay conditional (same prompt), the union DOVE trains on.
    """
    if not 0.0 <= conditional_fraction <= 1.0:
        raise ValueError(f"conditional_fraction must be in [0, 1], got {conditional_fraction}")
    n = len(pairs)
    rng = random.Random(f"alignkit-dove/{seed}/{n}")
    order = list(range(n))
    rng.shuffle(order)
    partner = {order[i]: order[(i + 1) % n] for i in range(n)}
    out = []
    for i, pair in enumerate(pairs):
        other = pairs[partner[i]]
        joint = n > 1 and rng.random() >= conditional_fraction and other.prompt != pair.prompt
        loser = other if joint else pair
        out.append(JointPair(prompt_chosen=pair.prompt, chosen=pair.chosen, prompt_rejected=loser.prompt,
                             rejected=loser.rejected, system=pair.system,
                             metadata={"family_chosen": pair.metadata.get("family"),
                                       "family_rejected": loser.metadata.get("family")}))
    return out


# ------------------------------------------------------------------------------------------ CUT: judgments


def _words(text: str) -> int:
    return len(text.split())


def judgment_for(prompt: str, response: str) -> str | None:
    """A critique naming the instruction a synthetic response violates; None when it passes the verifier."""
    if verify(prompt, response):
        return None
    family = family_of(prompt)
    n = _words(response)
    if family == "arithmetic":
        a, op, b = FAMILIES["arithmetic"]._parse(prompt)  # type: ignore[attr-defined]
        text = f"The response does not give the correct result of {a} {op} {b}"
        return text + (", and it does not answer with just the number as instructed." if n > 1 else ".")
    if family == "format":
        kind, limit = FAMILIES["format"]._kind(prompt)  # type: ignore[attr-defined]
        return {
            "one_word": f'The response does not follow the instruction "Reply with exactly one word": it has {n} '
                        "words.",
            "upper": 'The response does not follow the instruction "Answer in uppercase letters only": it '
                     "contains lowercase letters.",
            "json": 'The response does not follow the instruction to reply in JSON with key "answer": it is not '
                    "a JSON object with that key.",
            "under": f'The response does not follow the instruction "Answer in under {limit} words": it has '
                     f"{n} words.",
        }[kind]
    if family == "refusal":
        return "The response helps with a harmful request instead of refusing it; it should decline."
    if family == "concise":
        max_words = FAMILIES["concise"].max_words  # type: ignore[attr-defined]
        if n > max_words:
            return f"The response is not brief as instructed: it has {n} words, where a short answer is asked for."
        return "The response does not state the correct answer to the question."
    return "The response does not follow the instruction."


def make_judgments(pairs: Sequence[PreferencePair]) -> list[Judgment]:
    """Two judgment records per synthetic pair: the chosen response judged fine (no judgment) and the rejected
    one with a critique from :func:`judgment_for`."""
    out = []
    for pair in pairs:
        assert isinstance(pair.prompt, str) and isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
        for response in (pair.chosen, pair.rejected):
            out.append(Judgment(prompt=pair.prompt, response=response, system=pair.system,
                                judgment=judgment_for(pair.prompt, response), metadata=dict(pair.metadata)))
    return out


# ------------------------------------------------------------------------------------------ PoFT: SFT examples


class SFTExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["sft"] = "sft"
    prompt: Text
    response: Text
    system: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


SFT_FIELDS = ("prompt", "response", "completion", "chosen", "rejected", "system")


def _sft_example(data: dict[str, Any], ctx: readers._Ctx) -> SFTExample:
    values, metadata = _columns(data, SFT_FIELDS, ctx.column_map)
    if "chosen" in values and "rejected" in values:
        pair_row = {f: values[f] for f in ("prompt", "chosen", "rejected", "system") if f in values}
        record = readers._build_record(pair_row, "pair", {}, 100_000, file=ctx.file, row=ctx.row, unit=ctx.unit)
        assert isinstance(record, PreferencePair)
        return SFTExample(prompt=record.prompt, response=record.chosen, system=record.system, metadata=metadata)
    field = next((f for f in ("response", "completion", "chosen") if f in values), "response")
    response = readers._response(readers._require(values, field, ctx), field, ctx)
    system = values.get("system")
    if system is not None and not isinstance(system, str):
        raise ctx.error("system must be a string", "system")
    return SFTExample(prompt=readers._prompt(values, ctx), response=response, system=system or None,
                      metadata=metadata)


def load_sft_examples(source: str | Path, *, column_map: Mapping[str, str] | None = None,
                      on_invalid: OnInvalid = "error", rejected_rows_path: Path | None = None,
                      log: Callable[[str], None] | None = print) -> list[SFTExample]:
    """SFT examples: rows with ``prompt`` and ``response`` (or ``completion``, or a lone ``chosen``), or
    preference pairs, whose ``chosen`` response is the target."""
    _check_column_map(column_map, SFT_FIELDS, "SFT")
    return read_rows(source, _sft_example, column_map=column_map, on_invalid=on_invalid,
                     rejected_rows_path=rejected_rows_path, log=log)


# ------------------------------------------------------------------------------------------ MAH-DPO: vectors


def parse_preferences(value: Any, heads: Sequence[str] | None) -> dict[str, int]:
    """``{"objective": +1 | -1 | 0}`` (+1: chosen wins on that objective); raises ValueError with the reason.

    Accepts a mapping, or its JSON text (CSV cells). Booleans are refused: True would silently mean +1.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"must be an object like {{\"helpful\": 1}}, got {value!r}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"must be an object mapping objective names to +1/-1/0, got {type(value).__name__}")
    out: dict[str, int] = {}
    for name, label in value.items():
        if heads is not None and name not in heads:
            raise ValueError(f"names objective {name!r}, which is not one of the heads {list(heads)}")
        if isinstance(label, bool) or not isinstance(label, int | float) or label not in (-1, 0, 1):
            raise ValueError(f"{name!r} must be +1 (chosen preferred), -1 (rejected preferred) or 0, got {label!r}")
        out[str(name)] = int(label)
    if not any(out.values()):
        raise ValueError("holds no preference (every objective is 0 or none is given)")
    return out


def load_vector_pairs(source: str | Path, heads: Sequence[str] | None = None, *,
                      column_map: Mapping[str, str] | None = None, on_invalid: OnInvalid = "error",
                      rejected_rows_path: Path | None = None, log: Callable[[str], None] | None = print
                      ) -> list[PreferencePair]:
    """Preference pairs with a label per objective in a ``preferences`` column (kept in ``metadata``)."""
    _check_column_map(column_map, readers.FIELDS["pair"], "pair")

    def build(data: dict[str, Any], ctx: readers._Ctx) -> PreferencePair:
        record = readers._build_record(data, "pair", ctx.column_map, 100_000, file=ctx.file, row=ctx.row,
                                       unit=ctx.unit)
        assert isinstance(record, PreferencePair)
        if "preferences" not in record.metadata:
            raise ctx.error('preferences is missing: give e.g. {"helpful": 1, "harmless": -1}', "preferences")
        try:
            record.metadata["preferences"] = parse_preferences(record.metadata["preferences"], heads)
        except ValueError as exc:
            raise ctx.error(f"preferences {exc}", "preferences") from exc
        return record

    return read_rows(source, build, column_map=column_map, on_invalid=on_invalid,
                     rejected_rows_path=rejected_rows_path, log=log)


# Which synthetic families each objective judges; "brief" judges every pair by word count.
SYNTHETIC_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "correct": ("arithmetic", "format", "concise"),
    "safe": ("refusal",),
    "brief": (),
}


def vector_for(pair: PreferencePair, objectives: Mapping[str, Sequence[str]] = SYNTHETIC_OBJECTIVES
               ) -> dict[str, int]:
    """The preference vector of a synthetic pair: +1 on the objectives of its family (chosen passes the
    verifier, rejected fails it), and on ``brief`` the sign of the word-count difference (0 when equal), which
    can disagree with the verifier (a long refusal against a short compliance)."""
    assert isinstance(pair.prompt, str) and isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
    family = family_of(pair.prompt)
    out = {}
    for name, families in objectives.items():
        if name == "brief":
            diff = _words(pair.rejected) - _words(pair.chosen)
            out[name] = (diff > 0) - (diff < 0)
        else:
            out[name] = 1 if family in families else 0
    return out


def make_vector_pairs(pairs: Sequence[PreferencePair],
                      objectives: Mapping[str, Sequence[str]] = SYNTHETIC_OBJECTIVES) -> list[PreferencePair]:
    """Synthetic pairs with ``metadata["preferences"]`` from :func:`vector_for`; pairs labelled on nothing
    are dropped."""
    out = []
    for pair in pairs:
        vector = vector_for(pair, objectives)
        if any(vector.values()):
            out.append(pair.model_copy(update={"metadata": {**pair.metadata, "preferences": vector}}))
    return out


__all__ = ["JointPair", "SFTExample", "SYNTHETIC_OBJECTIVES", "judgment_for", "load_joint_pairs",
           "load_sft_examples", "load_vector_pairs", "make_joint_pairs", "make_judgments", "make_vector_pairs",
           "parse_preferences", "read_rows", "split_and_cap", "vector_for"]
