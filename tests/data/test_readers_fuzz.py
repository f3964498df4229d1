"""Property tests over the readers: whatever the bytes or rows, the result is records or one DataError.

Arbitrary bytes (raw, gzipped, or gzipped and cut short) under every text extension, and arbitrary JSON rows
written as JSONL, a JSON array and CSV, go through every loader; any exception but :class:`DataError` fails.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.data.errors import DataError
from alignkit.data.readers import (
    LoadResult,
    load_joint_pairs,
    load_records,
    load_sft_examples,
    load_vector_pairs,
    read_rows,
)
from alignkit.data.records import (
    BinaryFeedback,
    JointPair,
    Judgment,
    PreferencePair,
    RankedGroup,
    SFTExample,
)
from alignkit.io import read_jsonl

# name -> (loader(path, on_invalid, rejected_rows_path), record type)
LOADERS: dict[str, tuple[Callable, type]] = {
    "pair": (functools.partial(load_records, kind="pair"), PreferencePair),
    "binary": (functools.partial(load_records, kind="binary"), BinaryFeedback),
    "judgment": (functools.partial(load_records, kind="judgment"), Judgment),
    "ranked": (functools.partial(load_records, kind="ranked"), RankedGroup),
    "joint": (load_joint_pairs, JointPair),
    "sft": (load_sft_examples, SFTExample),
    "vector": (functools.partial(load_vector_pairs, heads=None), PreferencePair),
}
FIELD_NAMES = ["prompt", "chosen", "rejected", "system", "completion", "label", "response", "judgment", "score",
               "responses", "scores", "ranks", "prompt_chosen", "prompt_rejected", "preferences", "metadata", "x"]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    return []


def _check(path: Path, name: str, on_invalid: str) -> None:
    """Load ``path`` with loader ``name``: records of the right type, or exactly one DataError."""
    loader, record_type = LOADERS[name]
    rejected_path = path.parent / "rejected.jsonl"
    rejected_path.unlink(missing_ok=True)
    try:
        result = loader(path, on_invalid=on_invalid, rejected_rows_path=rejected_path, log=None)
    except DataError as error:
        assert str(error)  # formats without raising
        return
    records = result.records if isinstance(result, LoadResult) else result
    assert records and all(isinstance(r, record_type) for r in records)
    for record in records:
        # every text a tokenizer will see is valid Unicode
        for text in _texts(record.model_dump(exclude={"metadata"})):
            text.encode("utf-8")
    if isinstance(result, LoadResult):
        assert result.n_read == len(records) + result.n_skipped
        if on_invalid == "skip" and result.n_skipped:
            assert len(read_jsonl(rejected_path, tolerate_torn_tail=False)) == result.n_skipped


# ---------------------------------------------------------------------------------------------- bytes

# Fragments that make arbitrary bytes reach past the first parse: JSON punctuation, our field names, chat
# messages, a BOM, broken UTF-8, lone-surrogate escapes, huge numbers, CSV quoting.
_FRAGMENTS = [b"{", b"}", b"[", b"]", b":", b",", b"\n", b"\r\n", b" ", b'"', b"\\", b"null", b"true", b"1", b"-2.5",
              b"1e999", b"9" * 400, b'"\\ud800"', b"\xff", b"\xe9", b"\xef\xbb\xbf", b"\x00", b'"x"', b'""',
              b'"role"', b'"user"', b'"assistant"', b'"content"', b"\n\nHuman: hi\n\nAssistant: yo",
              *(json.dumps(f).encode() for f in FIELD_NAMES), b"prompt,chosen,rejected\n", b"a,b,c\n"]
_byte_strings = st.one_of(st.binary(max_size=300),
                          st.lists(st.sampled_from(_FRAGMENTS), max_size=60).map(b"".join))


def _compress(data: bytes, mode: str) -> bytes:
    if mode == "plain":
        return data
    packed = gzip.compress(data)
    return packed if mode == "gzip" else packed[: max(2, len(packed) * 2 // 3)]


@SETTINGS
@given(data=_byte_strings, suffix=st.sampled_from([".jsonl", ".json", ".csv", ".ndjson", ".jsonl.gz", ".csv.gz"]),
       packing=st.sampled_from(["plain", "plain", "gzip", "truncated"]), name=st.sampled_from(sorted(LOADERS)),
       on_invalid=st.sampled_from(["error", "skip"]))
def test_arbitrary_bytes_give_records_or_one_data_error(data, suffix, packing, name, on_invalid):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(_compress(data, packing))
        _check(path, name, on_invalid)


# ---------------------------------------------------------------------------------------------- JSON rows

_strings = st.one_of(st.text(max_size=12), st.sampled_from(["", "  ", "Hi", "\ud800", "true", "0", "3.5", "nan",
                                                            "\n\nHuman: q\n\nAssistant: a", "Human: q"]))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**310),
                     st.floats(), _strings)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_strings, inner, max_size=3),
                     max_leaves=8)
# Mostly well-formed values, so rows get past the first check and reach the later ones.
_words = st.one_of(st.sampled_from(["Hi", "Say hi.", "4", "Paris", "No.", "x\ud800"]), st.text(min_size=1, max_size=8))
_message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "assistant", "tool", "system"]),
                       st.sampled_from(["bot", None, 1, [], ["user"], {}])),
     "content": st.one_of(_words, _words, _scalars)},
    optional={"name": _scalars})
_messages = st.lists(_message, min_size=0, max_size=4)
_text_value = st.one_of(_words, _words, _messages, st.sampled_from(["\n\nHuman: q\n\nAssistant: a",
                                                                   "\n\nHuman: q\n\nAssistant: b",
                                                                   "\n\nHuman: q\udc00\n\nAssistant: b"]))
_number = st.one_of(st.integers(-3, 3), st.floats(), st.integers(min_value=10**300, max_value=10**310),
                    st.sampled_from(["2", "high", "nan", "1e999"]))
_good = {
    "label": st.sampled_from([True, False, 0, 1, 1.0, "yes", "no", 2, "maybe", None]),
    "judgment": st.one_of(st.none(), _words),
    "score": _number,
    "responses": st.lists(_text_value, max_size=4),
    "scores": st.lists(_number, max_size=4),
    "ranks": st.lists(st.one_of(st.integers(-3, 3), st.integers(min_value=10**300, max_value=10**310), st.booleans()),
                      max_size=4),
    "preferences": st.one_of(st.dictionaries(st.sampled_from(["a", "b", "helpful"]),
                                             st.one_of(st.integers(-2, 2), st.booleans(), st.floats()), max_size=3),
                             st.sampled_from(['{"a": 1}', "{", "[1]"])),
    "metadata": _json,
    "system": st.one_of(st.none(), _words, _scalars),
}
_values = {name: st.one_of(_good.get(name, _text_value), _good.get(name, _text_value), _json) for name in FIELD_NAMES}
_rows = st.lists(st.fixed_dictionaries({}, optional=_values), min_size=0, max_size=4)


def _write(rows: list[dict], fmt: str, path: Path) -> Path:
    if fmt == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif fmt == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path = path.with_suffix(".csv")
        columns = sorted({key for row in rows for key in row})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items()})
        path.write_bytes(buffer.getvalue().encode("utf-8", "surrogatepass"))
    return path


@SETTINGS
@given(rows=_rows, fmt=st.sampled_from(["jsonl", "json", "csv"]), name=st.sampled_from(sorted(LOADERS)),
       on_invalid=st.sampled_from(["error", "skip"]))
def test_arbitrary_json_rows_give_records_or_one_data_error(rows, fmt, name, on_invalid):
    with tempfile.TemporaryDirectory() as tmp:
        _check(_write(rows, fmt, Path(tmp) / "data"), name, on_invalid)


# ------------------------------------------------------------------------------ what the properties found


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[" * 50_000, "nested too deeply"),
        (b'{"prompt": "p", "chosen": "c", "rejected": "r", "n": ' + b"7" * 5000 + b"}", "invalid JSON: Exceeds"),
        (b'{"prompt": "p\\ud800", "chosen": "c", "rejected": "r"}', "unpaired surrogate \\ud800"),
        (b'{"prompt": [{"role": ["user"], "content": "q"}], "chosen": "c", "rejected": "r"}', "has role ['user']"),
        (b'{"chosen": "\\n\\nHuman: q\\udc00\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}',
         "unpaired surrogate"),
    ],
)
def test_json_that_used_to_escape_as_other_exceptions(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]").replace("\\u", r"\\u")):
        load_records(path, log=None)
    array = tmp_path / "data.json"
    array.write_bytes(b"[" + line + b"]")
    with pytest.raises(DataError):
        load_records(array, log=None)


def test_numbers_too_large_for_a_float_are_data_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r", "score": 10**400}) + "\n")
    with pytest.raises(DataError, match="score is too large"):
        load_records(path, "judgment", log=None)
    path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 10**400]}) + "\n")
    with pytest.raises(DataError, match="ranks holds an integer too large"):
        load_records(path, "ranked", log=None)


def test_a_csv_cell_too_deep_for_json_stays_text(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\n" + "[" * 50_000 + ",c,r\n")
    (record,) = load_records(path, log=None).records
    assert record.prompt == "[" * 50_000


def test_rejected_rows_with_undecodable_text_are_written_escaped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "\\udc80", "chosen": 1}\n')
    result = load_records(path, on_invalid="skip", rejected_rows_path=tmp_path / "rejected.jsonl", log=None)
    assert len(result.records) == 1
    (written,) = read_jsonl(tmp_path / "rejected.jsonl")
    assert written["raw"]["prompt"] == "\\udc80" and written["row"] == 2


def test_read_rows_takes_any_builder(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n{"a": "x"}\n{"b": 2}\n')

    def build(row, ctx):
        if not isinstance(row.get("a"), int):
            raise ctx.error("a must be an integer", "a")
        return row["a"]

    with pytest.raises(DataError, match="line 2, field 'a': a must be an integer"):
        read_rows(path, build, log=None)
    logged: list[str] = []
    result = read_rows(path, build, on_invalid="skip", log=logged.append)
    assert (result.records, result.n_read, result.n_skipped) == ([1], 3, 2)
    assert logged == [f"skipped 2 of 3 rows of {path} as invalid; first: {result.rejected[0]['error']}"]
