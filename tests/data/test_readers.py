from __future__ import annotations

import gzip
import json
from copy import deepcopy
from pathlib import Path

import pytest

from alignkit.data.errors import DataError
from alignkit.data.readers import LoadResult, load_records
from alignkit.data.records import BinaryFeedback, Judgment, Message, PreferencePair, RankedGroup

USER = {"role": "user", "content": "Hi there"}
HELLO = {"role": "assistant", "content": "Hello! How can I help?"}
GO_AWAY = {"role": "assistant", "content": "Go away."}


def _quiet(*_args) -> None:
    pass


def _load(path, kind="pair", **kwargs) -> LoadResult:
    kwargs.setdefault("log", _quiet)
    return load_records(path, kind, **kwargs)


def _error(path, kind="pair", **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        _load(path, kind, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------------ readers


def _check_pairs(result: LoadResult, pair_rows: list[dict]) -> None:
    assert result.n_read == 3 and result.n_skipped == 0 and result.rejected == []
    assert [r.prompt for r in result.records] == [r["prompt"] for r in pair_rows]
    first = result.records[0]
    assert isinstance(first, PreferencePair)
    assert (first.chosen, first.rejected) == ("4", "5")
    assert first.metadata["user_id"] == "u1"
    assert float(first.metadata["agreement"]) == 0.9


def test_jsonl(write_jsonl, pair_rows):
    _check_pairs(_load(write_jsonl(pair_rows)), pair_rows)


def test_jsonl_gz(write_jsonl, pair_rows):
    _check_pairs(_load(write_jsonl(pair_rows, "data.jsonl.gz", gz=True)), pair_rows)


def test_jsonl_skips_blank_lines_and_bom(write_jsonl, pair_rows):
    bom_first = b"\xef\xbb\xbf" + json.dumps(pair_rows[0]).encode()
    path = write_jsonl([bom_first, "", pair_rows[1], "  ", pair_rows[2]])
    _check_pairs(_load(path), pair_rows)


def test_json_array(tmp_path, pair_rows):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(pair_rows, indent=2))
    _check_pairs(_load(path), pair_rows)


def test_json_holding_json_lines_is_read_as_jsonl(write_jsonl, pair_rows):
    _check_pairs(_load(write_jsonl(pair_rows, "data.json")), pair_rows)
    path = write_jsonl([pair_rows[0], {**pair_rows[1], "chosen": ""}], "bad.json")
    assert str(_error(path)) == f"{path}, line 2, field 'chosen': chosen is empty"


def test_json_array_errors_use_zero_based_rows(tmp_path, pair_rows):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([pair_rows[0], {**pair_rows[1], "chosen": ""}]))
    assert str(_error(path)) == f"{path}, row 1, field 'chosen': chosen is empty"


def test_broken_json_array_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n{"prompt": "a", "chosen": "b", "rejected": "c"},\n{"prompt": \n]')
    error = _error(path, on_invalid="skip")
    assert error.row == 4 and "line 4" in str(error) and "invalid JSON" in str(error)


def test_csv(write_csv, pair_rows):
    _check_pairs(_load(write_csv(pair_rows)), pair_rows)


def test_csv_gz(tmp_path, write_csv, pair_rows):
    gz = tmp_path / "data.csv.gz"
    gz.write_bytes(gzip.compress(write_csv(pair_rows).read_bytes()))
    _check_pairs(_load(gz), pair_rows)


def test_csv_conversational_cells_are_json(write_csv):
    path = write_csv([{"prompt": [USER], "chosen": [HELLO], "rejected": [GO_AWAY], "system": ""}])
    record = _load(path).records[0]
    assert record.prompt == [Message(**USER)] and record.chosen == [Message(**HELLO)]
    assert record.system is None


def test_csv_multiline_field_and_line_numbers(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,chosen,rejected\n"two\nlines",a,b\nq,,b\n')
    error = _error(path)
    assert str(error) == f"{path}, line 4, field 'chosen': chosen is missing"
    assert _load(path, on_invalid="skip").records[0].prompt == "two\nlines"


def test_csv_ragged_row(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\nq,a,b,extra\n")
    assert "line 2" in str(_error(path)) and "4 values but the header has 3 columns" in str(_error(path))


def test_parquet_with_message_lists(write_parquet):
    path = write_parquet([
        {"prompt": [USER], "chosen": [HELLO], "rejected": [GO_AWAY], "score_gap": 1.5},
        {"prompt": [USER], "chosen": [HELLO], "rejected": [HELLO], "score_gap": 0.0},
    ])
    error = _error(path)
    assert error.row == 1 and error.unit == "row"
    assert str(error) == f"{path}, row 1, field 'chosen': chosen is identical to rejected"
    result = _load(path, on_invalid="skip")
    assert result.records[0].chosen == [Message(**HELLO)] and result.records[0].metadata == {"score_gap": 1.5}
    assert result.rejected[0]["row"] == 1


def test_parquet_messages_with_keys_other_rows_use(write_parquet):
    # Arrow unifies struct fields across rows, so the first row's messages gain name=None.
    path = write_parquet([
        {"prompt": [USER], "chosen": [HELLO], "rejected": [GO_AWAY]},
        {"prompt": [USER], "chosen": [{**HELLO, "name": "bot"}], "rejected": [GO_AWAY]},
    ])
    result = _load(path, on_invalid="skip")
    assert len(result.records) == 1 and "unsupported keys ['name']" in result.rejected[0]["error"]


def test_saved_dataset_dir(tmp_path, pair_rows):
    import datasets

    datasets.Dataset.from_list(pair_rows).save_to_disk(str(tmp_path / "single"))
    _check_pairs(_load(tmp_path / "single"), pair_rows)

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(pair_rows),
                                   "test": datasets.Dataset.from_list(pair_rows[:1])})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert len(_load(tmp_path / "dict").records) == 3
    assert len(_load(tmp_path / "dict", split="test").records) == 1
    assert "has no split 'validation'" in str(_error(tmp_path / "dict", split="validation"))


def test_saved_dataset_rows_are_zero_based(tmp_path, pair_rows):
    import datasets

    rows = [pair_rows[0], {**pair_rows[1], "rejected": "Paris"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert str(_error(tmp_path / "ds")).startswith(f"{tmp_path / 'ds'}, row 1, field 'chosen'")


def test_hub_id_goes_to_load_dataset(monkeypatch, pair_rows):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(pair_rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _check_pairs(_load("someone/prefs", split="test"), pair_rows)
    assert calls == [("someone/prefs", "test")]


def test_hub_failure_is_a_data_error(monkeypatch):
    import datasets

    def failing(name, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    error = _error("someone/prefs")
    assert "someone/prefs" in str(error) and "offline" in str(error)


def test_missing_local_file_never_tries_the_hub(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub must not be tried"))
    assert "file not found" in str(_error(tmp_path / "nope.jsonl"))
    assert "file not found" in str(_error("./nope"))


def test_explicit_format_and_unknown_extension(tmp_path, pair_rows):
    path = tmp_path / "data.txt"
    path.write_text("\n".join(json.dumps(r) for r in pair_rows))
    assert "format=" in str(_error(path))
    _check_pairs(_load(path, format="jsonl"), pair_rows)
    with pytest.raises(ValueError, match="format must be one of"):
        _load(path, format="xml")


def test_plain_directory_is_rejected(tmp_path):
    assert "save_to_disk" in str(_error(tmp_path))


# ------------------------------------------------------------------------------------------------ formats


def test_conversational_pairs(write_jsonl):
    prompt = [{"role": "system", "content": "Be kind."}, USER, HELLO, {"role": "user", "content": "Bye"}]
    path = write_jsonl([{"prompt": prompt, "chosen": [{"role": "assistant", "content": "Goodbye!"}],
                         "rejected": [GO_AWAY]}])
    record = _load(path).records[0]
    assert [m.role for m in record.prompt] == ["system", "user", "assistant", "user"]
    assert record.chosen == [Message(role="assistant", content="Goodbye!")]


def test_implicit_prompt_conversations(write_jsonl):
    earlier = [USER, HELLO, {"role": "user", "content": "Tell me a joke"}]
    path = write_jsonl([{"chosen": earlier + [{"role": "assistant", "content": "Knock knock."}],
                         "rejected": earlier + [GO_AWAY], "source": "x"}])
    record = _load(path).records[0]
    assert record.prompt == [Message(**m) for m in earlier]
    assert record.chosen == [Message(role="assistant", content="Knock knock.")]
    assert record.rejected == [Message(**GO_AWAY)]
    assert record.metadata == {"source": "x"}


def test_explicit_prompt_next_to_whole_conversations_must_agree(write_jsonl):
    # The UltraFeedback-binarized layout: prompt string plus full conversations.
    good = {"prompt": "Hi there", "chosen": [USER, HELLO], "rejected": [USER, GO_AWAY]}
    bad = {**good, "prompt": "Something else"}
    path = write_jsonl([good, bad])
    assert _load(path, on_invalid="skip").records[0].prompt == [Message(**USER)]
    assert str(_error(path)).endswith("line 2, field 'prompt': prompt does not match the conversation "
                                      "prefix that chosen and rejected share")


def test_raw_hh_transcripts(write_jsonl):
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: And then?"
    path = write_jsonl([{"chosen": shared + "\n\nAssistant: Knead and bake.",
                         "rejected": shared + "\n\nAssistant: No idea.", "agreement": 0.8}])
    record = _load(path).records[0]
    assert [m.role for m in record.prompt] == ["user", "assistant", "user"]
    assert record.prompt[-1].content == "And then?"
    assert record.chosen == [Message(role="assistant", content="Knead and bake.")]
    assert record.rejected == [Message(role="assistant", content="No idea.")]
    assert record.metadata == {"agreement": 0.8}


def test_system_column(write_jsonl, pair_rows):
    record = _load(write_jsonl([{**pair_rows[0], "system": "Be terse."}])).records[0]
    assert record.system == "Be terse." and "system" not in record.metadata


def test_nested_metadata_column_is_merged(write_jsonl, pair_rows):
    record = _load(write_jsonl([{**pair_rows[0], "metadata": {"scores": {"helpful": 3}}}])).records[0]
    assert record.metadata == {"scores": {"helpful": 3}, "agreement": 0.9, "user_id": "u1"}


def test_column_map(write_jsonl):
    path = write_jsonl([{"question": "q?", "pos": "yes", "neg": "no", "extra": 1}])
    record = _load(path, column_map={"prompt": "question", "chosen": "pos", "rejected": "neg"}).records[0]
    assert (record.prompt, record.chosen, record.rejected) == ("q?", "yes", "no")
    assert record.metadata == {"extra": 1}


def test_column_map_errors_name_field_and_column(write_jsonl):
    path = write_jsonl([{"question": "q?", "pos": "", "neg": "no"}])
    error = _error(path, column_map={"prompt": "question", "chosen": "pos", "rejected": "neg"})
    assert str(error) == f"{path}, line 1, field 'chosen' (column 'pos'): chosen is empty"
    with pytest.raises(ValueError, match="column_map has fields \\['completion'\\]"):
        _load(path, column_map={"completion": "pos"})


def test_binary(write_jsonl, write_csv):
    labels = [True, False, 1, 0, "true", "False", "1", "0"]
    rows = [{"prompt": f"p{i}", "completion": "c", "label": label} for i, label in enumerate(labels)]
    expected = [True, False, True, False, True, False, True, False]
    records = _load(write_jsonl(rows), "binary").records
    assert all(isinstance(r, BinaryFeedback) for r in records)
    assert [r.label for r in records] == expected
    # CSV can only hold strings; booleans arrive as "True"/"False", 0/1 as "0"/"1".
    assert [r.label for r in _load(write_csv(rows), "binary").records] == expected


@pytest.mark.parametrize("label", ["maybe", 2, 0.5, None, [1]])
def test_binary_bad_label(write_jsonl, label):
    error = _error(write_jsonl([{"prompt": "p", "completion": "c", "label": label}]), "binary")
    assert error.field == "label" and "line 1, field 'label'" in str(error)


def test_judgment(write_jsonl, write_csv):
    rows = [{"prompt": "p", "response": "r", "judgment": "Too vague.", "score": 2},
            {"prompt": "p", "response": "r2", "judgment": "", "score": None}]
    for path in (write_jsonl(rows), write_csv(rows)):
        first, second = _load(path, "judgment").records
        assert isinstance(first, Judgment)
        assert (first.judgment, first.score) == ("Too vague.", 2.0)
        assert (second.judgment, second.score) == (None, None)
    error = _error(write_jsonl([{**rows[0], "score": "high"}]), "judgment")
    assert error.field == "score" and "must be a number" in str(error)


def test_ranked(write_jsonl, write_csv):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "scores": [1.0, 3.0, 2.0]},
            {"prompt": "q", "responses": ["x", "y"], "ranks": [2, 1]}]
    for path in (write_jsonl(rows), write_csv([{**rows[0], "ranks": None}, {**rows[1], "scores": None}])):
        first, second = _load(path, "ranked").records
        assert isinstance(first, RankedGroup) and first.scores == [1.0, 3.0, 2.0]
        assert second.scores == [-2.0, -1.0]
    assert "at least 2 responses" in str(_error(write_jsonl([{"prompt": "p", "responses": ["a"],
                                                              "scores": [1]}]), "ranked"))
    error = _error(write_jsonl([{"prompt": "p", "responses": ["a", ""], "scores": [1, 2]}]), "ranked")
    assert str(error).endswith("line 1, field 'responses': responses[1] is empty")


def test_ranked_groups_whose_scores_all_tie_are_counted_and_logged(write_jsonl):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 1, 2]},
            {"prompt": "q", "responses": ["x", "y", "z"], "scores": [3, 3, 3]},
            {"prompt": "r", "responses": ["u", "v"], "ranks": [1, 1]}]
    path = write_jsonl(rows)
    logged: list[str] = []
    result = load_records(path, "ranked", log=logged.append)
    assert [len(group.to_pairs()) for group in result.records] == [2, 0, 0]
    assert result.n_tied_groups == 2
    assert logged == [f"2 of 3 ranked groups of {path} yield no preference pairs: all their scores tie"]
    assert [list(group.pair_indices()) for group in result.records] == [[(2, 0), (2, 1)], [], []]
    logged.clear()
    assert load_records(write_jsonl(rows[:1], "untied.jsonl"), "ranked", log=logged.append).n_tied_groups == 0
    assert logged == []


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"prompt": "p", "rejected": "r"}, "chosen", "chosen is missing"),
        ({"prompt": "p", "chosen": None, "rejected": "r"}, "chosen", "chosen is missing"),
        ({"prompt": "p", "chosen": "  ", "rejected": "r"}, "chosen", "chosen is empty"),
        ({"prompt": "", "chosen": "c", "rejected": "r"}, "prompt", "prompt is empty"),
        ({"chosen": "c", "rejected": "r"}, "prompt", "prompt is missing"),
        ({"prompt": "p", "chosen": 42, "rejected": "r"}, "chosen",
         "chosen must be a string or a list of messages, got a number (42)"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen", "chosen is identical to rejected"),
        ({"prompt": "p", "chosen": "c", "rejected": []}, "rejected", "rejected is empty"),
        ({"prompt": [USER], "chosen": [{"role": "assistant"}], "rejected": [GO_AWAY]}, "chosen",
         "chosen: message 0 has no 'content'"),
        ({"prompt": [USER], "chosen": [{"role": "bot", "content": "x"}], "rejected": [GO_AWAY]}, "chosen",
         "chosen: message 0 has role 'bot'"),
        ({"prompt": [USER], "chosen": ["hi"], "rejected": [GO_AWAY]}, "chosen",
         "chosen: message 0 must be an object"),
        ({"prompt": [USER], "chosen": [{**HELLO, "name": "x"}], "rejected": [GO_AWAY]}, "chosen",
         "unsupported keys ['name']"),
        ({"prompt": [USER], "chosen": [{"role": "assistant", "content": 3}], "rejected": [GO_AWAY]},
         "chosen", "content must be a string"),
        ({"prompt": [USER, HELLO], "chosen": [HELLO], "rejected": [GO_AWAY]}, "prompt",
         "prompt messages must end with a user turn"),
        ({"chosen": "c", "rejected": "r"}, "prompt", "cannot be inferred"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "system": 3}, "system", "system must be a string"),
        ({"chosen": [USER, HELLO], "rejected": [{"role": "user", "content": "Other"}, GO_AWAY]}, "prompt",
         "prompt cannot be inferred"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nAssistant: b"}, "rejected",
         "rejected is not a valid HH-RLHF transcript"),
    ],
)
def test_row_errors_name_file_line_and_field(write_jsonl, pair_rows, row, field, message):
    path = write_jsonl([pair_rows[0], pair_rows[1], row])
    error = _error(path)
    assert (error.file, error.row, error.field) == (str(path), 3, field)
    assert str(error).startswith(f"{path}, line 3, field '{field}': ")
    assert message in str(error)


def test_bad_utf8_is_pinpointed(write_jsonl, pair_rows):
    bad = json.dumps(pair_rows[1]).encode().replace(b"Paris", b"Par\xe9s")
    path = write_jsonl([pair_rows[0], bad, pair_rows[2]])
    error = _error(path)
    assert str(error).startswith(f"{path}, line 2: not valid UTF-8: byte 0xe9")
    result = _load(path, on_invalid="skip")
    assert [r.prompt for r in result.records] == ["What is 2+2?", "Say hi"]
    assert result.rejected[0]["row"] == 2 and "Par\\xe9s" in result.rejected[0]["raw"]


def test_bad_utf8_in_csv_is_pinpointed(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b'prompt,chosen,rejected\nq,a,b\n"multi\nline",caf\xe9,b\nq2,a,b\n')
    assert str(_error(path)).startswith(f"{path}, line 3, field 'chosen': not valid UTF-8")
    result = _load(path, on_invalid="skip", rejected_rows_path=tmp_path / "rejected.jsonl")
    assert [r.prompt for r in result.records] == ["q", "q2"]
    assert json.loads((tmp_path / "rejected.jsonl").read_text())["raw"]["chosen"] == "caf\\xe9"


def test_invalid_json_line(write_jsonl, pair_rows):
    path = write_jsonl([pair_rows[0], '{"prompt": "p", "chosen": ', "[1, 2]"])
    error = _error(path)
    assert str(error).startswith(f"{path}, line 2: invalid JSON")
    result = _load(path, on_invalid="skip")
    assert result.n_read == 3 and result.n_skipped == 2
    assert "line 3: expected a JSON object, got a list" in result.rejected[1]["error"]


def _truncated_gzip(write_jsonl, n_rows: int = 400) -> Path:
    rows = [{"prompt": f"question {i} " * 20, "chosen": f"good {i}", "rejected": f"bad {i}"}
            for i in range(n_rows)]
    path = write_jsonl(rows, "data.jsonl.gz", gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_truncated_gzip_is_always_fatal(write_jsonl, on_invalid):
    path = _truncated_gzip(write_jsonl)
    error = _error(path, on_invalid=on_invalid)
    assert str(error).startswith(f"{path}: gzip stream is truncated or corrupt after ")
    assert "complete lines were read" in str(error)
    lines_read = int(str(error).split(" after ")[1].split()[0])
    assert 0 < lines_read < 400


def test_truncated_gzip_whole_file_formats(tmp_path, pair_rows):
    path = tmp_path / "data.json.gz"
    path.write_bytes(gzip.compress(json.dumps(pair_rows * 50).encode())[:-30])
    assert "truncated or corrupt" in str(_error(path, on_invalid="skip"))


def test_corrupt_gzip(write_jsonl, pair_rows):
    path = write_jsonl(pair_rows * 20, "data.jsonl.gz", gz=True)
    data = bytearray(path.read_bytes())
    data[20:40] = b"\xff" * 20
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in str(_error(path))


def test_over_long_rows(write_jsonl, pair_rows):
    path = write_jsonl([pair_rows[0], {**pair_rows[1], "chosen": "x" * 250_000}])
    error = _error(path)
    assert str(error) == (f"{path}, line 2, field 'chosen': chosen is 250000 characters, "
                          "over the limit of 100000")
    assert len(_load(path, max_chars=300_000).records) == 2
    messages = [{"role": "assistant", "content": "y" * 60}, {"role": "assistant", "content": "y" * 60}]
    error = _error(write_jsonl([{"prompt": "p", "chosen": messages, "rejected": "r"}]), max_chars=100)
    assert error.field == "chosen" and "120 characters" in str(error)


def test_skip_mode_counts_and_rejected_rows_file(write_jsonl, pair_rows, tmp_path):
    rows = [pair_rows[0], {**pair_rows[1], "chosen": ""}, pair_rows[2], {"prompt": "p", "chosen": "c"},
            "not json"]
    path = write_jsonl(rows)
    logged: list[str] = []
    rejected_path = tmp_path / "out" / "rejected_rows.jsonl"
    result = load_records(path, on_invalid="skip", rejected_rows_path=rejected_path, log=logged.append)
    assert (result.n_read, result.n_skipped, len(result.records)) == (5, 3, 2)
    assert logged == [f"skipped 3 of 5 rows of {path} as invalid; see {rejected_path}"]
    written = [json.loads(line) for line in rejected_path.read_text().splitlines()]
    assert written == result.rejected
    assert [(w["row"], w["field"]) for w in written] == [(2, "chosen"), (4, "rejected"), (5, None)]
    assert all(set(w) == {"file", "row", "field", "error", "raw"} for w in written)
    assert written[0]["raw"]["prompt"] == "Capital of France?" and written[2]["raw"] == "not json"
    assert written[1]["error"] == f"{path}, line 4, field 'rejected': rejected is missing"


def test_skip_mode_without_rejects_logs_and_writes_nothing(write_jsonl, pair_rows, tmp_path):
    # A split without rejections must not empty the rejected-rows file another split wrote (issue 20).
    logged: list[str] = []
    (tmp_path / "r.jsonl").write_text('{"earlier": "rejection"}\n')
    load_records(write_jsonl(pair_rows), on_invalid="skip", rejected_rows_path=tmp_path / "r.jsonl",
                 log=logged.append)
    assert logged == [] and (tmp_path / "r.jsonl").read_text() == '{"earlier": "rejection"}\n'
    load_records(write_jsonl(pair_rows), on_invalid="skip", rejected_rows_path=tmp_path / "new.jsonl",
                 log=logged.append)
    assert not (tmp_path / "new.jsonl").exists()


def test_every_row_invalid_is_an_error_even_when_skipping(write_jsonl):
    error = _error(write_jsonl([{"prompt": "p"}, {"prompt": "q"}]), on_invalid="skip")
    assert "all 2 rows are invalid" in str(error)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_jsonl(tmp_path, content):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    assert str(_error(path)) == f"{path}: is empty: it holds no rows"


def test_empty_csv_and_parquet(tmp_path, write_parquet):
    header_only = tmp_path / "data.csv"
    header_only.write_text("prompt,chosen,rejected\n")
    assert "is empty" in str(_error(header_only))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "is empty" in str(_error(empty))
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])
    pq.write_table(schema.empty_table(), tmp_path / "empty.parquet")
    assert "is empty" in str(_error(tmp_path / "empty.parquet"))


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    assert "not a readable parquet file" in str(_error(path))


def test_bad_arguments(write_jsonl, pair_rows):
    path = write_jsonl(pair_rows)
    with pytest.raises(ValueError, match="kind must be one of"):
        _load(path, "triple")
    with pytest.raises(ValueError, match="on_invalid"):
        _load(path, on_invalid="ignore")


def test_data_error_format_and_pickle():
    error = DataError("chosen is empty", file="data.jsonl", row=7, field="chosen")
    assert str(error) == "data.jsonl, line 7, field 'chosen': chosen is empty"
    assert isinstance(error, ValueError) and error.message == "chosen is empty"
    assert str(DataError("bad", file="d.parquet", row=6, unit="row")) == "d.parquet, row 6: bad"
    assert str(DataError("bad")) == "bad"
    # deepcopy rebuilds through __reduce__, the path multiprocessing workers use to send the error back
    copy = deepcopy(DataError("x", file="f", row=2, field="label", column="y"))
    assert (str(copy), copy.column) == ("f, line 2, field 'label' (column 'y'): x", "y")
