from __future__ import annotations

import pytest

from alignkit.data.errors import DataError
from alignkit.data.hh_rlhf import parse_transcript, split_prompt_response
from alignkit.data.readers import load_records
from alignkit.data.records import Message, PreferencePair


def user(text: str) -> Message:
    return Message(role="user", content=text)


def bot(text: str) -> Message:
    return Message(role="assistant", content=text)


def test_parse_transcript():
    text = "\n\nHuman: Hi there \n\nAssistant:  Hello!\n\nHuman: Bye\n\nAssistant: See you."
    assert parse_transcript(text) == [user("Hi there"), bot("Hello!"), user("Bye"), bot("See you.")]


def test_parse_transcript_without_leading_newlines_and_inner_markers():
    # "Human:" inside a turn (no blank line before it) is content, not a new turn.
    text = "Human: Say 'Human: hi'\n\nAssistant: Human: hi"
    assert parse_transcript(text) == [user("Say 'Human: hi'"), bot("Human: hi")]


def test_parse_transcript_merges_consecutive_turns():
    text = "\n\nHuman: q\n\nAssistant: part one\n\nAssistant: part two\n\nHuman: ok"
    assert parse_transcript(text) == [user("q"), bot("part one\n\npart two"), user("ok")]
    assert len(parse_transcript(text, merge_consecutive=False)) == 4


def test_parse_transcript_keeps_an_empty_final_turn():
    assert parse_transcript("\n\nHuman: q\n\nAssistant:") == [user("q"), bot("")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "transcript is empty"),
        ("  \n ", "transcript is empty"),
        ("\n\nAssistant: hi\n\nHuman: q", "does not start with 'Human:'"),
        ("hello\n\nHuman: q", "does not start with 'Human:'"),
        (None, "transcript must be a string"),
    ],
)
def test_parse_transcript_rejects_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        parse_transcript(text)


def test_split_prompt_response():
    prompt = [user("a"), bot("b"), user("c")]
    assert split_prompt_response(prompt + [bot("good")], prompt + [bot("bad")]) == (
        prompt, [bot("good")], [bot("bad")])


def test_split_backs_off_to_the_last_user_turn():
    # The responses share their first assistant turn; the prompt must still end with the user turn.
    prompt = [user("q")]
    split = split_prompt_response(prompt + [bot("x"), bot("good")], prompt + [bot("x"), bot("bad")])
    assert split == (prompt, [bot("x"), bot("good")], [bot("x"), bot("bad")])


@pytest.mark.parametrize(
    ("chosen", "rejected", "message"),
    [
        ([user("q"), bot("a")], [user("q"), bot("a")], "chosen is identical to rejected"),
        ([user("q"), bot("a")], [user("other"), bot("a")], "prompt cannot be inferred"),
        ([bot("a")], [bot("b")], "prompt cannot be inferred"),
        ([user("q"), bot("a"), user("r"), bot("b")], [user("q"), bot("c"), user("s"), bot("d")],
         "message 2 is a user turn"),
        ([user("q")], [user("q"), bot("a")], "chosen has no response"),
    ],
)
def test_split_rejects_non_pairs(chosen, rejected, message):
    with pytest.raises(ValueError, match=message):
        split_prompt_response(chosen, rejected)


def test_real_hh_rlhf_sample(hh_data, tmp_path):
    """The first 1000 rows of HH-RLHF harmless-base test, parsed as raw transcripts."""
    rejected_path = tmp_path / "rejected_rows.jsonl"
    result = load_records(hh_data, on_invalid="skip", rejected_rows_path=rejected_path, log=lambda _: None)
    assert result.n_read == 1000
    # Three rows prefer an empty final assistant turn (the labeller chose silence); records forbid an empty
    # chosen response, so those rows are rejected, not silently repaired.
    assert result.n_skipped == 3 and len(result.records) == 997
    assert [(r["row"], r["field"]) for r in result.rejected] == [(87, "chosen"), (517, "chosen"),
                                                                 (926, "chosen")]
    assert all("chosen is empty" in r["error"] for r in result.rejected)
    assert len(rejected_path.read_text().splitlines()) == 3

    for record in result.records:
        assert isinstance(record, PreferencePair)
        assert isinstance(record.prompt, list) and record.prompt[-1].role == "user"
        assert record.chosen != record.rejected
        assert all(m.role == "assistant" for m in record.chosen + record.rejected)
        roles = [m.role for m in record.prompt]
        assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:], strict=False))

    first = result.records[0]
    assert [m.role for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[0].content == "what are some pranks with a pen i can do?"
    assert first.prompt[-1].content == "okay some of these do not have anything to do with pens"
    assert len(first.chosen) == 1 and first.chosen[0].content.startswith("No, sorry!  All of these involve")
    assert first.rejected[0].content.startswith("There are lots of funny things you can do with pens")
    assert first.metadata == {}


def test_real_hh_rlhf_sample_strict_mode_stops_at_the_first_bad_row(hh_data):
    with pytest.raises(DataError) as info:
        load_records(hh_data, log=lambda _: None)
    assert str(info.value) == (f"{hh_data}, line 87, field 'chosen': chosen is empty "
                               "(its final assistant turn has no text)")
