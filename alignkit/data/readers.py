"""Read preference data from files, saved datasets or the Hub into validated records.

Every row is checked and every problem is reported as a :class:`DataError` naming the file, the line
(JSONL/CSV, 1-based) or row (JSON arrays, parquet, ``datasets``; 0-based) and the field. With
``on_invalid="skip"`` bad rows are set aside instead, counted, and optionally written out for inspection;
damage that loses rows we cannot see (a truncated gzip) is always fatal.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ValidationError

from alignkit.data.errors import DataError, RowUnit
from alignkit.data.hh_rlhf import is_transcript, parse_transcript, split_prompt_response
from alignkit.data.records import RECORD_TYPES, Message, Record, Role, Text, text_is_empty

__all__ = ["DataError", "LoadResult", "load_records", "FIELDS"]

Kind = Literal["pair", "binary", "judgment", "ranked"]
Format = Literal["jsonl", "json", "csv", "parquet", "disk", "hub"]

# Our field names per kind; anything else in a row goes to metadata.
FIELDS: dict[str, tuple[str, ...]] = {
    "pair": ("prompt", "chosen", "rejected", "system"),
    "binary": ("prompt", "completion", "label", "system"),
    "judgment": ("prompt", "response", "judgment", "score", "system"),
    "ranked": ("prompt", "responses", "scores", "ranks", "system"),
}
# Fields whose length counts against max_chars.
_TEXT_FIELDS = {"prompt", "chosen", "rejected", "completion", "response", "judgment", "system"}
_ROLES = frozenset(get_args(Role))
_GZIP_MAGIC = b"\x1f\x8b"
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class LoadResult:
    records: list[Record]
    n_read: int
    n_skipped: int
    rejected: list[dict] = field(default_factory=list)


@dataclass
class _Row:
    """One raw row from a source: its position, its columns, or the error that stopped it being read."""

    row: int
    data: dict[str, Any] | None
    error: DataError | None = None
    raw: Any = None
    unit: RowUnit = "line"


def load_records(
    source: str | Path,
    kind: Kind = "pair",
    *,
    format: str | None = None,
    column_map: dict[str, str] | None = None,
    split: str = "train",
    on_invalid: Literal["error", "skip"] = "error",
    max_chars: int = 100_000,
    rejected_rows_path: Path | None = None,
    log: Callable[[str], None] | None = print,
) -> LoadResult:
    """Load ``source`` as records of ``kind``, validating every row.

    ``format`` is detected from the extension (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, each optionally
    ``.gz``), a ``datasets.save_to_disk`` directory, or else ``source`` is taken as a Hub dataset id.
    ``column_map`` maps our field name to the source column (``{"chosen": "pos"}``). A ``.json`` file holding
    JSON Lines rather than an array is read as JSONL, as ``datasets`` does.
    """
    if kind not in FIELDS:
        raise ValueError(f"kind must be one of {sorted(FIELDS)}, got {kind!r}")
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    column_map = dict(column_map or {})
    unknown = sorted(set(column_map) - set(FIELDS[kind]))
    if unknown:
        raise ValueError(f"column_map has fields {unknown} that kind={kind!r} does not have; "
                         f"its fields are {list(FIELDS[kind])}")
    name = str(source)
    fmt = _detect_format(source, format)

    records: list[Record] = []
    rejected: list[dict] = []
    n_read = 0
    for item in _iter_rows(source, fmt, split):
        n_read += 1
        try:
            if item.error is not None:
                raise item.error
            assert item.data is not None
            records.append(_build_record(item.data, kind, column_map, max_chars,
                                         file=name, row=item.row, unit=item.unit))
        except DataError as exc:
            if on_invalid == "error":
                raise
            rejected.append({"file": name, "row": item.row, "field": exc.field, "error": str(exc),
                             "raw": item.raw if item.raw is not None else item.data})

    if n_read == 0:
        raise DataError("is empty: it holds no rows", file=name)
    if on_invalid == "skip":
        if rejected_rows_path is not None:
            _write_rejected(Path(rejected_rows_path), rejected)
        if rejected and log is not None:
            where = f"see {rejected_rows_path}" if rejected_rows_path is not None else \
                f"first: {rejected[0]['error']}"
            log(f"skipped {len(rejected)} of {n_read} rows of {name} as invalid; {where}")
        if not records:
            # Returning an empty dataset would let a training run start on nothing.
            raise DataError(f"all {n_read} rows are invalid; first: {rejected[0]['error']}", file=name)
    return LoadResult(records=records, n_read=n_read, n_skipped=len(rejected), rejected=rejected)


# ---------------------------------------------------------------------------------------------- sources


def _strip_gz(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _detect_format(source: str | Path, format: str | None) -> str:
    if format is not None:
        if format not in get_args(Format):
            raise ValueError(f"format must be one of {list(get_args(Format))}, got {format!r}")
        return format
    path = Path(source)
    if path.is_dir():
        if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "disk"
        raise DataError("is a directory but not a dataset saved by datasets.save_to_disk", file=str(source))
    ext = _strip_gz(path)
    if ext in _EXTENSIONS:
        if not path.exists():
            raise DataError("file not found", file=str(source))
        return _EXTENSIONS[ext]
    if path.exists():
        raise DataError(f"cannot tell the format from the extension {''.join(path.suffixes)!r}; "
                        f"pass format= one of {list(get_args(Format))}", file=str(source))
    text = str(source)
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        raise DataError("file not found (and it does not look like a Hub dataset id)", file=text)
    return "hub"


def _iter_rows(source: str | Path, fmt: str, split: str) -> Iterator[_Row]:
    name = str(source)
    if fmt == "jsonl":
        return _iter_jsonl(Path(source), name)
    if fmt == "json":
        return _iter_json(Path(source), name)
    if fmt == "csv":
        return _iter_csv(Path(source), name)
    if fmt == "parquet":
        return _iter_parquet(Path(source), name)
    if fmt == "disk":
        return _iter_dataset(_load_disk(Path(source), name, split))
    return _iter_dataset(_load_hub(name, split))


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_bytes(path: Path, name: str):
    try:
        return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open: {exc}", file=name) from exc


def _corrupt(name: str, lines: int, exc: BaseException) -> DataError:
    return DataError(f"gzip stream is truncated or corrupt after {lines} complete lines were read ({exc}); "
                     "rows after that point are lost, so this cannot be skipped: re-download or re-create "
                     "the file", file=name)


# EOFError: stream cut mid-member; BadGzipFile: bad header/CRC; zlib.error: damaged deflate data.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _read_all(path: Path, name: str) -> bytes:
    """Whole file, decompressed; a damaged gzip is reported with how far it got."""
    chunks, lines = [], 0
    with _open_bytes(path, name) as fh:
        try:
            while chunk := fh.read(1 << 20):
                chunks.append(chunk)
                lines += chunk.count(b"\n")
        except _GZIP_ERRORS as exc:
            raise _corrupt(name, lines, exc) from exc
    return b"".join(chunks)


def _decode_line(raw: bytes, name: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
                        "(is the file in another encoding?)", file=name, row=lineno) from exc


def _parse_json_object(text: str, name: str, row: int, unit: RowUnit) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} at column {exc.colno}", file=name, row=row,
                        unit=unit) from exc
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {_type_name(value)}", file=name, row=row, unit=unit)
    return value


def _iter_jsonl(path: Path, name: str, lines: Iterator[bytes] | None = None) -> Iterator[_Row]:
    # Bytes in, decoded line by line, so one bad byte costs one row and is located exactly.
    fh = None
    if lines is None:
        fh = _open_bytes(path, name)
        lines = iter(fh)
    lineno = 0
    try:
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _GZIP_ERRORS as exc:
                raise _corrupt(name, lineno, exc) from exc
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = _decode_line(raw, name, lineno)
                yield _Row(lineno, _parse_json_object(text, name, lineno, "line"))
            except DataError as exc:
                yield _Row(lineno, None, exc, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"))
    finally:
        if fh is not None:
            fh.close()


def _iter_json(path: Path, name: str) -> Iterator[_Row]:
    data = _read_all(path, name)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.lstrip().startswith(b"["):
        # Many datasets ship JSON Lines under a .json name; datasets.load_dataset("json") accepts both.
        yield from _iter_jsonl(path, name, iter(io.BytesIO(data)))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not valid UTF-8: byte 0x{data[exc.start]:02x}", file=name, row=line) from exc
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        # One broken array loses every row after the error, so this is never skippable.
        raise DataError(f"invalid JSON: {exc.msg} at column {exc.colno}", file=name, row=exc.lineno) from exc
    for index, item in enumerate(items):
        if isinstance(item, dict):
            yield _Row(index, item, unit="row")
        else:
            error = DataError(f"expected a JSON object, got {_type_name(item)}", file=name, row=index,
                              unit="row")
            yield _Row(index, None, error, item, unit="row")


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _unescape(value: Any) -> Any:
    if isinstance(value, str) and _has_surrogates(value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _iter_csv(path: Path, name: str) -> Iterator[_Row]:
    data = _read_all(path, name)
    # Quoted CSV fields may span lines, so decode the whole file; surrogateescape keeps undecodable bytes
    # visible so the row holding them can be rejected on its own.
    text = data.decode("utf-8-sig", "surrogateescape")
    previous_limit = csv.field_size_limit(2**31 - 1)  # the 128 KiB default would reject long rows here,
    try:                                               # before max_chars can report them properly
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"malformed CSV header: {exc}", file=name, row=1) from exc
        if header is None:
            return
        header = [h.strip() for h in header]
        if any(_has_surrogates(h) for h in header):
            raise DataError("not valid UTF-8 in the header", file=name, row=1)
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"malformed CSV: {exc}", file=name, row=start) from exc
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            raw = {h: _unescape(v) for h, v in zip(header, values, strict=False)}
            if len(values) != len(header):
                error = DataError(f"has {len(values)} values but the header has {len(header)} columns",
                                  file=name, row=start)
                yield _Row(start, None, error, [_unescape(v) for v in values])
                continue
            bad = next((h for h, v in zip(header, values, strict=True) if _has_surrogates(v)), None)
            if bad is not None:
                error = DataError("not valid UTF-8 (is the file in another encoding?)", file=name,
                                  row=start, field=bad)
                yield _Row(start, None, error, raw)
                continue
            yield _Row(start, {h: _from_csv_cell(v) for h, v in zip(header, values, strict=True)}, raw=raw)
    finally:
        csv.field_size_limit(previous_limit)


def _from_csv_cell(value: str) -> Any:
    """CSV has only strings: read JSON lists/objects (message lists, scores) and empty cells as missing."""
    stripped = value.strip()
    if not stripped:
        return None
    if stripped[0] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def _iter_parquet(path: Path, name: str) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable parquet file: {exc}", file=name) from exc
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield _Row(index, row, unit="row")
                index += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"parquet file is corrupt after {index} rows were read: {exc}", file=name) from exc
    finally:
        parquet.close()


def _load_disk(path: Path, name: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises a zoo of types for damaged directories
        raise DataError(f"cannot load the saved dataset: {exc}", file=name) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"has no split {split!r}; it has {sorted(loaded)}", file=name)
        loaded = loaded[split]
    return loaded


def _load_hub(name: str, split: str):
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, auth, missing dataset or split: all mean "cannot read this source"
        raise DataError(f"not a local file, and loading it as a Hugging Face Hub dataset failed: {exc}",
                        file=name) from exc
    return loaded


def _iter_dataset(dataset) -> Iterator[_Row]:
    for index, row in enumerate(dataset):
        yield _Row(index, dict(row), unit="row")


def _write_rejected(path: Path, rejected: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as fh:
        for entry in rejected:
            fh.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- records


class _Ctx:
    """Where we are, so every error names file, line/row and field (and the source column if renamed)."""

    def __init__(self, file: str, row: int, unit: RowUnit, column_map: Mapping[str, str]) -> None:
        self.file, self.row, self.unit, self.column_map = file, row, unit, column_map

    def error(self, message: str, field: str | None = None) -> DataError:
        column = self.column_map.get(field) if field is not None else None
        return DataError(message, file=self.file, row=self.row, field=field, unit=self.unit, column=column)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _raw_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_raw_length(v) for v in value)
    if isinstance(value, dict):
        content = value.get("content")
        return len(content) if isinstance(content, str) else 0
    return 0


def _build_record(data: dict[str, Any], kind: str, column_map: Mapping[str, str], max_chars: int, *,
                  file: str, row: int, unit: RowUnit) -> Record:
    ctx = _Ctx(file, row, unit, column_map)
    values: dict[str, Any] = {}
    for name in FIELDS[kind]:
        column = column_map.get(name, name)
        if column in data:
            values[name] = data[column]
    used = {column_map.get(name, name) for name in values}
    metadata = {k: v for k, v in data.items() if k not in used}
    if isinstance(metadata.get("metadata"), dict):  # a nested metadata column is merged, not nested again
        metadata = {**metadata.pop("metadata"), **metadata}

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
        raise ctx.error(f"system must be a string, got {_type_name(system)}", "system")
    common = {"system": system or None, "metadata": metadata}

    build = {"pair": _pair, "binary": _binary, "judgment": _judgment, "ranked": _ranked}[kind]
    fields = build(values, ctx)
    try:
        return RECORD_TYPES[kind](**fields, **common)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        loc = first.get("loc") or ()
        field_name = str(loc[0]) if loc else message.split(" ", 1)[0].split(":")[0].split("[")[0]
        raise ctx.error(message, field_name if field_name in FIELDS[kind] else None) from exc


def _require(values: dict[str, Any], name: str, ctx: _Ctx) -> Any:
    value = values.get(name)
    if value is None:
        raise ctx.error(f"{name} is missing", name)
    return value


def _text(value: Any, name: str, ctx: _Ctx, field: str | None = None) -> Text:
    """A string or a well-formed list of messages; anything else is a typed error naming the field.

    ``name`` is what messages call the value (``responses[2]``), ``field`` the record field it belongs to.
    """
    field = field or name
    if isinstance(value, str):
        if not value.strip():
            raise ctx.error(f"{name} is empty", field)
        return value
    if not isinstance(value, list):
        raise ctx.error(f"{name} must be a string or a list of messages, got {_type_name(value)}", field)
    if not value:
        raise ctx.error(f"{name} is empty (an empty list of messages)", field)
    messages = []
    for i, item in enumerate(value):
        if isinstance(item, Message):
            messages.append(item)
            continue
        if not isinstance(item, dict):
            raise ctx.error(f"{name}: message {i} must be an object with 'role' and 'content', "
                            f"got {_type_name(item)}", field)
        missing = [k for k in ("role", "content") if k not in item]
        if missing:
            raise ctx.error(f"{name}: message {i} has no {' or '.join(repr(k) for k in missing)}", field)
        # Arrow gives every message every key seen anywhere in the column, as None where absent.
        extra = sorted(k for k, v in item.items() if k not in ("role", "content") and v is not None)
        if extra:
            raise ctx.error(f"{name}: message {i} has unsupported keys {extra}; only 'role' and 'content' "
                            "are read", field)
        role, content = item["role"], item["content"]
        if role not in _ROLES:
            raise ctx.error(f"{name}: message {i} has role {role!r}; expected one of {sorted(_ROLES)}", field)
        if not isinstance(content, str):
            raise ctx.error(f"{name}: message {i} content must be a string, got {_type_name(content)}", field)
        messages.append(Message(role=role, content=content))
    if text_is_empty(messages):
        raise ctx.error(f"{name} is empty (every message has empty content)", field)
    return messages


def _prompt(values: dict[str, Any], ctx: _Ctx) -> Text:
    prompt = _text(_require(values, "prompt", ctx), "prompt", ctx)
    if isinstance(prompt, list) and prompt[-1].role != "user":
        raise ctx.error(f"prompt messages must end with a user turn, but the last is a {prompt[-1].role} "
                        "turn", "prompt")
    return prompt


def _response(value: Any, name: str, ctx: _Ctx, field: str | None = None) -> Text:
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


def _pair(values: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    chosen_raw, rejected_raw = _require(values, "chosen", ctx), _require(values, "rejected", ctx)
    prompt_raw = values.get("prompt")
    prompt_absent = prompt_raw is None or (isinstance(prompt_raw, str) and not prompt_raw.strip())

    both_strings = isinstance(chosen_raw, str) and isinstance(rejected_raw, str)
    if prompt_absent and both_strings and (is_transcript(chosen_raw) or is_transcript(rejected_raw)):
        # (d) raw HH-RLHF: two transcripts sharing every turn but the last assistant one.
        conversations = []
        for name, raw in (("chosen", chosen_raw), ("rejected", rejected_raw)):
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
    return {"prompt": _prompt(values, ctx), "chosen": _response(chosen_raw, "chosen", ctx),
            "rejected": _response(rejected_raw, "rejected", ctx)}


def _split(chosen: list[Message], rejected: list[Message], ctx: _Ctx) -> dict[str, Any]:
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


def _check_explicit_prompt(explicit: Any, derived: list[Message], ctx: _Ctx) -> None:
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


def _label(value: Any, ctx: _Ctx) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ctx.error(f"label must be a boolean, 0/1 or 'true'/'false', got {value!r}", "label")


def _binary(values: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    completion = _response(_require(values, "completion", ctx), "completion", ctx)
    return {"prompt": _prompt(values, ctx), "completion": completion,
            "label": _label(_require(values, "label", ctx), ctx)}


def _number(value: Any, name: str, ctx: _Ctx) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ctx.error(f"{name} must be a number, got {value!r}", name) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(f"{name} must be a number, got {_type_name(value)}", name)
    return None if math.isnan(value) else float(value)


def _judgment(values: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    judgment = values.get("judgment")
    if judgment is not None and not isinstance(judgment, str):
        raise ctx.error(f"judgment must be a string or null, got {_type_name(judgment)}", "judgment")
    response = _response(_require(values, "response", ctx), "response", ctx)
    return {"prompt": _prompt(values, ctx), "response": response,
            "judgment": judgment if judgment and judgment.strip() else None,
            "score": _number(values.get("score"), "score", ctx)}


def _ranked(values: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    responses = _require(values, "responses", ctx)
    if not isinstance(responses, list):
        raise ctx.error(f"responses must be a list, got {_type_name(responses)}", "responses")
    texts = [_response(r, f"responses[{i}]", ctx, "responses") for i, r in enumerate(responses)]
    scores, ranks = values.get("scores"), values.get("ranks")
    if scores is not None:
        if not isinstance(scores, list):
            raise ctx.error(f"scores must be a list of numbers, got {_type_name(scores)}", "scores")
        scores = [_number(s, "scores", ctx) for s in scores]
        if any(s is None for s in scores):
            raise ctx.error("scores holds a missing value", "scores")
    if ranks is not None:
        if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool)
                                                  for r in ranks):
            raise ctx.error(f"ranks must be a list of integers, got {ranks!r}", "ranks")
    return {"prompt": _prompt(values, ctx), "responses": texts, "scores": scores, "ranks": ranks}
