"""One raw row (a dict of columns) into one validated record, or a :class:`DataError` naming the field.

Every builder takes the row and a :class:`RowContext` (file, line/row, column map) and is what
:func:`alignkit.data.readers.read_rows` calls per row: :func:`build_record` for the kinds ``load_records``
reads (``pair``, ``binary``, ``judgment``, ``ranked``), :func:`build_joint_pair`, :func:`build_sft_example` and
:func:`build_vector_pair` for the others. Columns that are not fields of the kind go to ``metadata``.

Preference pairs come in four shapes: (a) ``prompt``/``chosen``/``rejected`` strings, (b) a conversational
prompt with assistant-only responses, (c) ``chosen`` and ``rejected`` as two whole conversations whose shared
prefix is the prompt, (d) raw HH-RLHF transcripts (Bai et al., "Training a Helpful and Harmless Assistant with
Reinforcement Learning from Human Feedback", arXiv:2204.05862).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from alignkit.data.errors import DataError, RowUnit, type_name
from alignkit.data.hh_rlhf import is_transcript, parse_transcript, split_prompt_response
from alignkit.data.records import (
    RECORD_TYPES,
    JointPair,
    Message,
    PreferencePair,
    Record,
    Role,
    SFTExample,
    Text,
    text_is_empty,
)

__all__ = ["FIELDS", "JOINT_FIELDS", "SFT_FIELDS", "RowContext", "build_joint_pair", "build_record",
           "build_sft_example", "build_vector_pair", "check_column_map", "parse_preferences", "split_columns"]

# Our field names per kind read by load_records; anything else in a row goes to metadata.
FIELDS: dict[str, tuple[str, ...]] = {
    "pair": ("prompt", "chosen", "rejected", "system"),
    "binary": ("prompt", "completion", "label", "system"),
    "judgment": ("prompt", "response", "judgment", "score", "system"),
    "ranked": ("prompt", "responses", "scores", "ranks", "system"),
}
JOINT_FIELDS = ("prompt_chosen", "prompt_rejected", "chosen", "rejected", "prompt", "system")
SFT_FIELDS = ("prompt", "response", "completion", "chosen", "rejected", "system")
# Fields whose length counts against max_chars.
_TEXT_FIELDS = {"prompt", "chosen", "rejected", "completion", "response", "judgment", "system", "prompt_chosen",
                "prompt_rejected"}
_ROLES = frozenset(get_args(Role))
DEFAULT_MAX_CHARS = 100_000


class RowContext:
    """Where we are, so every error names file, line/row and field (and the source column if renamed)."""

    def __init__(self, file: str, row: int, unit: RowUnit, column_map: Mapping[str, str]) -> None:
        self.file, self.row, self.unit, self.column_map = file, row, unit, column_map

    def error(self, message: str, field: str | None = None) -> DataError:
        column = self.column_map.get(field) if field is not None else None
        return DataError(message, file=self.file, row=self.row, field=field, unit=self.unit, column=column)


def check_column_map(column_map: Mapping[str, str] | None, fields: Sequence[str], what: str) -> None:
    """Refuse a ``column_map`` naming fields ``what`` (``"kind='pair'"``) does not have: a typo there would
    otherwise surface as "field is missing" on every row."""
    unknown = sorted(set(column_map or {}) - set(fields))
    if unknown:
        raise ValueError(f"column_map has fields {unknown} that {what} does not have; its fields are {list(fields)}")


def split_columns(data: Mapping[str, Any], fields: Sequence[str], column_map: Mapping[str, str]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our ``fields`` present in the row, the other columns as metadata); a nested ``metadata`` column is
    merged into the metadata, not nested again."""
    values = {f: data[column_map.get(f, f)] for f in fields if column_map.get(f, f) in data}
    used = {column_map.get(f, f) for f in values}
    metadata = {k: v for k, v in data.items() if k not in used}
    if isinstance(metadata.get("metadata"), dict):
        metadata = {**metadata.pop("metadata"), **metadata}
    return values, metadata


def _raw_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_raw_length(v) for v in value)
    if isinstance(value, dict):
        content = value.get("content")
        return len(content) if isinstance(content, str) else 0
    return 0


def _columns(data: Mapping[str, Any], fields: Sequence[str], ctx: RowContext, max_chars: int
             ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """:func:`split_columns`, then the checks every kind shares: text lengths against ``max_chars`` and a
    string ``system``. Returns (values, metadata, system)."""
    values, metadata = split_columns(data, fields, ctx.column_map)
    for name, value in values.items():
        if name in _TEXT_FIELDS:
            parts = [(name, value)]
        elif name == "responses" and isinstance(value, list):
            parts = [(f"responses[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        for label, part in parts:
            length = _raw_length(part)
            if length > max_chars:
                raise ctx.error(f"{label} is {length} characters, over the limit of {max_chars}", name)
    system = values.get("system")
    if system is not None and not isinstance(system, str):
        raise ctx.error(f"system must be a string, got {type_name(system)}", "system")
    if system is not None:
        _check_unicode(system, "system", ctx, "system")
    return values, metadata, system or None


def _validated(model: type[BaseModel], fields: dict[str, Any], ctx: RowContext, known: Sequence[str]) -> Any:
    """``model(**fields)`` with its validation error as a DataError, attributed to a field when it names one."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        loc = first.get("loc") or ()
        field_name = str(loc[0]) if loc else message.split(" ", 1)[0].split(":")[0].split("[")[0]
        raise ctx.error(message, field_name if field_name in known else None) from exc


# ---------------------------------------------------------------------------------------------- kinds


def build_record(data: Mapping[str, Any], ctx: RowContext, kind: str, max_chars: int = DEFAULT_MAX_CHARS
                 ) -> Record:
    """A record of ``kind`` (one of :data:`FIELDS`) from one row."""
    values, metadata, system = _columns(data, FIELDS[kind], ctx, max_chars)
    fields = _BUILDERS[kind](values, ctx)
    return _validated(RECORD_TYPES[kind], {**fields, "system": system, "metadata": metadata}, ctx, FIELDS[kind])


def build_joint_pair(data: Mapping[str, Any], ctx: RowContext, max_chars: int = DEFAULT_MAX_CHARS) -> JointPair:
    """A joint pair from one of: ``prompt_chosen``/``chosen``/``prompt_rejected``/``rejected``; two whole
    conversations whose user turns may differ; any ordinary preference pair (equal prompts)."""
    values, metadata, system = _columns(data, JOINT_FIELDS, ctx, max_chars)
    if "prompt_chosen" in values or "prompt_rejected" in values:
        sides = {}
        for side in ("chosen", "rejected"):
            sides[f"prompt_{side}"] = _prompt(_require(values, f"prompt_{side}", ctx), ctx, f"prompt_{side}")
            sides[side] = _response(_require(values, side, ctx), side, ctx)
    elif values.get("prompt") is None and _is_conversation(values.get("chosen")) \
            and _is_conversation(values.get("rejected")):
        sides = {}
        for side in ("chosen", "rejected"):
            messages = _text(values[side], side, ctx)
            assert isinstance(messages, list)
            sides[f"prompt_{side}"], sides[side] = _split_conversation(messages, side, ctx)
    else:  # an ordinary pair (any shape the pair reader accepts) is a conditional joint pair
        pair = _validated(PreferencePair, _pair(values, ctx), ctx, FIELDS["pair"])
        sides = {"prompt_chosen": pair.prompt, "prompt_rejected": pair.prompt, "chosen": pair.chosen,
                 "rejected": pair.rejected}
    return _validated(JointPair, {**sides, "system": system, "metadata": metadata}, ctx, JOINT_FIELDS)


def _split_conversation(messages: list[Message], name: str, ctx: RowContext
                        ) -> tuple[list[Message], list[Message]]:
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


def build_sft_example(data: Mapping[str, Any], ctx: RowContext, max_chars: int = DEFAULT_MAX_CHARS
                      ) -> SFTExample:
    """An SFT example from ``prompt`` and ``response`` (or ``completion``, or a lone ``chosen``), or from a
    preference pair, whose ``chosen`` response is the target."""
    values, metadata, system = _columns(data, SFT_FIELDS, ctx, max_chars)
    if "chosen" in values and "rejected" in values:
        pair = _validated(PreferencePair, _pair(values, ctx), ctx, FIELDS["pair"])
        prompt, response = pair.prompt, pair.chosen
    else:
        field = next((f for f in ("response", "completion", "chosen") if f in values), "response")
        response = _response(_require(values, field, ctx), field, ctx)
        prompt = _prompt(_require(values, "prompt", ctx), ctx)
    return _validated(SFTExample, {"prompt": prompt, "response": response, "system": system,
                                   "metadata": metadata}, ctx, SFT_FIELDS)


def build_vector_pair(data: Mapping[str, Any], ctx: RowContext, heads: Sequence[str] | None,
                      max_chars: int = DEFAULT_MAX_CHARS) -> PreferencePair:
    """A preference pair whose ``preferences`` column (kept in ``metadata``) holds a label per objective,
    checked by :func:`parse_preferences`."""
    record = build_record(data, ctx, "pair", max_chars)
    assert isinstance(record, PreferencePair)
    if "preferences" not in record.metadata:
        raise ctx.error('preferences is missing: give e.g. {"helpful": 1, "harmless": -1}', "preferences")
    try:
        record.metadata["preferences"] = parse_preferences(record.metadata["preferences"], heads)
    except ValueError as exc:
        raise ctx.error(f"preferences {exc}", "preferences") from exc
    return record


def parse_preferences(value: Any, heads: Sequence[str] | None) -> dict[str, int]:
    """``{"objective": +1 | -1 | 0}`` (+1: chosen wins on that objective); raises ValueError with the reason.

    Accepts a mapping, or its JSON text (CSV cells). Booleans are refused: True would silently mean +1.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
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


# ---------------------------------------------------------------------------------------------- fields


def _require(values: dict[str, Any], name: str, ctx: RowContext) -> Any:
    value = values.get(name)
    if value is None:
        raise ctx.error(f"{name} is missing", name)
    return value


def _check_unicode(value: str, name: str, ctx: RowContext, field: str) -> None:
    # A JSON escape like "\ud800" decodes to a lone surrogate, which no tokenizer can encode.
    bad = next((ch for ch in value if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        raise ctx.error(f"{name} holds an unpaired surrogate \\u{ord(bad):04x} (a broken JSON escape), which is "
                        "not valid Unicode", field)


def _text(value: Any, name: str, ctx: RowContext, field: str | None = None) -> Text:
    """A string or a well-formed list of messages; anything else is a typed error naming the field.

    ``name`` is what messages call the value (``responses[2]``), ``field`` the record field it belongs to.
    """
    field = field or name
    if isinstance(value, str):
        if not value.strip():
            raise ctx.error(f"{name} is empty", field)
        _check_unicode(value, name, ctx, field)
        return value
    if not isinstance(value, list):
        raise ctx.error(f"{name} must be a string or a list of messages, got {type_name(value)}", field)
    if not value:
        raise ctx.error(f"{name} is empty (an empty list of messages)", field)
    messages = []
    for i, item in enumerate(value):
        if isinstance(item, Message):
            messages.append(item)
            continue
        if not isinstance(item, dict):
            raise ctx.error(f"{name}: message {i} must be an object with 'role' and 'content', "
                            f"got {type_name(item)}", field)
        missing = [k for k in ("role", "content") if k not in item]
        if missing:
            raise ctx.error(f"{name}: message {i} has no {' or '.join(repr(k) for k in missing)}", field)
        # Arrow gives every message every key seen anywhere in the column, as None where absent.
        extra = sorted(str(k) for k, v in item.items() if k not in ("role", "content") and v is not None)
        if extra:
            raise ctx.error(f"{name}: message {i} has unsupported keys {extra}; only 'role' and 'content' "
                            "are read", field)
        role, content = item["role"], item["content"]
        if not isinstance(role, str) or role not in _ROLES:
            raise ctx.error(f"{name}: message {i} has role {role!r}; expected one of {sorted(_ROLES)}", field)
        if not isinstance(content, str):
            raise ctx.error(f"{name}: message {i} content must be a string, got {type_name(content)}", field)
        _check_unicode(content, f"{name}: message {i} content", ctx, field)
        messages.append(Message(role=role, content=content))
    if text_is_empty(messages):
        raise ctx.error(f"{name} is empty (every message has empty content)", field)
    return messages


def _prompt(value: Any, ctx: RowContext, name: str = "prompt") -> Text:
    prompt = _text(value, name, ctx)
    if isinstance(prompt, list) and prompt[-1].role != "user":
        raise ctx.error(f"{name} messages must end with a user turn, but the last is a {prompt[-1].role} turn",
                        name)
    return prompt


def _response(value: Any, name: str, ctx: RowContext, field: str | None = None) -> Text:
    response = _text(value, name, ctx, field)
    if isinstance(response, list):
        for i, message in enumerate(response):
            if message.role not in ("assistant", "tool"):
                raise ctx.error(f"{name}: message {i} is a {message.role} turn; a response holds only "
                                "assistant turns (give the conversation before it as the prompt)",
                                field or name)
    return response


def _is_conversation(value: Any) -> bool:
    """A whole conversation (it holds a user turn), as opposed to assistant-only response messages."""
    return isinstance(value, list) and any(isinstance(m, dict) and m.get("role") == "user" for m in value)


def _pair(values: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    chosen_raw, rejected_raw = _require(values, "chosen", ctx), _require(values, "rejected", ctx)
    prompt_raw = values.get("prompt")
    prompt_absent = prompt_raw is None or (isinstance(prompt_raw, str) and not prompt_raw.strip())

    both_strings = isinstance(chosen_raw, str) and isinstance(rejected_raw, str)
    if prompt_absent and both_strings and (is_transcript(chosen_raw) or is_transcript(rejected_raw)):
        # (d) raw HH-RLHF: two transcripts sharing every turn but the last assistant one.
        conversations = []
        for name, raw in (("chosen", chosen_raw), ("rejected", rejected_raw)):
            _check_unicode(raw, name, ctx, name)
            try:
                conversations.append(parse_transcript(raw))
            except ValueError as exc:
                raise ctx.error(f"{name} is not a valid HH-RLHF transcript: {exc}", name) from exc
        return _split(*conversations, ctx)

    if _is_conversation(chosen_raw) or _is_conversation(rejected_raw) or prompt_absent:
        if prompt_absent and not (isinstance(chosen_raw, list) and isinstance(rejected_raw, list)):
            if prompt_raw is not None:
                raise ctx.error("prompt is empty", "prompt")
            if both_strings:
                raise ctx.error("prompt is missing, and chosen/rejected are plain strings rather than "
                                "conversations or HH-RLHF transcripts, so it cannot be inferred", "prompt")
            raise ctx.error("prompt is missing, and chosen and rejected are not both message lists",
                            "prompt")
        # (c) implicit prompt: both sides are whole conversations; the shared prefix is the prompt.
        chosen, rejected = _text(chosen_raw, "chosen", ctx), _text(rejected_raw, "rejected", ctx)
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise ctx.error("chosen and rejected must both be message lists when either is a whole "
                            "conversation", "chosen" if isinstance(chosen, str) else "rejected")
        fields = _split(chosen, rejected, ctx)
        if not prompt_absent:
            _check_explicit_prompt(prompt_raw, fields["prompt"], ctx)
        return fields

    # (a) standard strings or (b) conversational prompt + assistant-only responses.
    return {"prompt": _prompt(_require(values, "prompt", ctx), ctx),
            "chosen": _response(chosen_raw, "chosen", ctx), "rejected": _response(rejected_raw, "rejected", ctx)}


def _split(chosen: list[Message], rejected: list[Message], ctx: RowContext) -> dict[str, Any]:
    try:
        prompt, chosen_response, rejected_response = split_prompt_response(chosen, rejected)
    except ValueError as exc:
        message = str(exc)
        name = message.split(" ", 1)[0]
        raise ctx.error(message, name if name in ("prompt", "chosen", "rejected") else None) from exc
    for name, response in (("chosen", chosen_response), ("rejected", rejected_response)):
        if text_is_empty(response):
            raise ctx.error(f"{name} is empty (its final assistant turn has no text)", name)
    return {"prompt": prompt, "chosen": chosen_response, "rejected": rejected_response}


def _check_explicit_prompt(explicit: Any, derived: list[Message], ctx: RowContext) -> None:
    """A prompt column next to whole conversations is redundant; make sure it agrees rather than ignore it."""
    if isinstance(explicit, str):
        agrees = explicit.strip() == derived[-1].content.strip()
    else:
        agrees = _text(explicit, "prompt", ctx) == derived
    if not agrees:
        raise ctx.error("prompt does not match the conversation prefix that chosen and rejected share",
                        "prompt")


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _label(value: Any, ctx: RowContext) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ctx.error(f"label must be a boolean, 0/1 or 'true'/'false', got {value!r}", "label")


def _binary(values: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    completion = _response(_require(values, "completion", ctx), "completion", ctx)
    return {"prompt": _prompt(_require(values, "prompt", ctx), ctx), "completion": completion,
            "label": _label(_require(values, "label", ctx), ctx)}


def _number(value: Any, name: str, ctx: RowContext) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ctx.error(f"{name} must be a number, got {value!r}", name) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(f"{name} must be a number, got {type_name(value)}", name)
    try:
        number = float(value)
    except OverflowError:
        raise ctx.error(f"{name} is too large to be a number", name) from None
    return None if math.isnan(number) else number


def _judgment(values: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    judgment = values.get("judgment")
    if judgment is not None and not isinstance(judgment, str):
        raise ctx.error(f"judgment must be a string or null, got {type_name(judgment)}", "judgment")
    if judgment is not None:
        _check_unicode(judgment, "judgment", ctx, "judgment")
    response = _response(_require(values, "response", ctx), "response", ctx)
    return {"prompt": _prompt(_require(values, "prompt", ctx), ctx), "response": response,
            "judgment": judgment if judgment and judgment.strip() else None,
            "score": _number(values.get("score"), "score", ctx)}


def _ranked(values: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    responses = _require(values, "responses", ctx)
    if not isinstance(responses, list):
        raise ctx.error(f"responses must be a list, got {type_name(responses)}", "responses")
    texts = [_response(r, f"responses[{i}]", ctx, "responses") for i, r in enumerate(responses)]
    scores, ranks = values.get("scores"), values.get("ranks")
    if scores is not None:
        if not isinstance(scores, list):
            raise ctx.error(f"scores must be a list of numbers, got {type_name(scores)}", "scores")
        scores = [_number(s, "scores", ctx) for s in scores]
        if any(s is None for s in scores):
            raise ctx.error("scores holds a missing value", "scores")
    if ranks is not None:
        if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool)
                                                  for r in ranks):
            raise ctx.error(f"ranks must be a list of integers, got {ranks!r}", "ranks")
        if any(abs(r) > 2**53 for r in ranks):  # ranks become float scores; beyond this they are not exact
            raise ctx.error("ranks holds an integer too large to be a rank", "ranks")
    return {"prompt": _prompt(_require(values, "prompt", ctx), ctx), "responses": texts, "scores": scores,
            "ranks": ranks}


_BUILDERS: dict[str, Callable[[dict[str, Any], RowContext], dict[str, Any]]] = {
    "pair": _pair, "binary": _binary, "judgment": _judgment, "ranked": _ranked,
}
