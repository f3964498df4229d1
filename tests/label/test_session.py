"""The labelling queue without a browser: inputs, output format, resume, undo, judgments."""

from __future__ import annotations

import json

import pytest

from alignkit.data import DataError, load_records
from alignkit.io import read_jsonl
from alignkit.label.pairs import load_pairs
from alignkit.label.session import LabelSession
from alignkit.label.store import LabelStore


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return write(tmp_path / "pairs.jsonl", [
        {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)])


def test_generation_output_gives_every_distinct_candidate_pair(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "text": "a", "selected": 0,
             "candidates": [{"text": "a", "tokens": 1}, {"text": "b", "tokens": 1}, {"text": "a", "tokens": 1},
                            {"text": "c", "tokens": 1}]},
            {"prompt": "p2", "system": "be brief", "candidates": [{"text": "x"}, {"text": "y"}]}]
    pairs = load_pairs(write(tmp_path / "gen.jsonl", rows))
    # prompt 1: candidates a, b, a, c -> pairs (0,1) (0,3) (1,2)=(b,a) seen as (0,1) (1,3) (2,3)=(a,c) seen
    assert [p.indices for p in pairs] == [(0, 1), (0, 3), (1, 3), (0, 1)]
    assert pairs[-1].system == "be brief"
    assert len(load_pairs(tmp_path / "gen.jsonl", max_pairs_per_prompt=1)) == 2
    with pytest.raises(DataError, match="candidates"):
        load_pairs(write(tmp_path / "bad.jsonl", [{"prompt": "p", "candidates": ["x", "y"]}]))


def test_labels_are_trl_pairs_that_load_records_reads(tmp_path, pairs_file):
    session = LabelSession(load_pairs(pairs_file), tmp_path / "labels.jsonl", default_annotator="ann",
                           agreement_slider=True)
    shown = session.current("ann")
    left = shown.pair.responses[shown.order[0]]
    session.label("ann", shown.pair.pair_id, "left", reason="  the other one is wrong ", agreement=0.8)
    record = load_records(tmp_path / "labels.jsonl", log=None).records[0]
    assert record.chosen == left and record.rejected != left
    assert record.metadata["agreement"] == 0.8 and record.metadata["annotator"] == "ann"
    assert record.metadata["shown_order"] == [shown.order[0], shown.order[1]]
    assert record.metadata["reason"] == "the other one is wrong"
    judgment = load_records(tmp_path / "labels.judgments.jsonl", kind="judgment", log=None).records[0]
    assert judgment.response == record.rejected and judgment.judgment == "the other one is wrong"
    with pytest.raises(ValueError, match="not the pair shown"):
        session.label("ann", shown.pair.pair_id, "right")


def test_resume_skips_done_pairs_and_undo_puts_the_pair_back(tmp_path, pairs_file):
    pairs = load_pairs(pairs_file)
    session = LabelSession(pairs, tmp_path / "labels.jsonl")
    first = session.current("a").pair.pair_id
    session.label("a", first, "tie", reason="same")
    second = session.current("a").pair.pair_id
    session.label("a", second, "both_bad", reason="both wrong")
    assert len(read_jsonl(tmp_path / "labels.judgments.jsonl")) == 2  # both responses criticised
    assert session.undo("a")["pair_id"] == second
    assert session.current("a").pair.pair_id == second
    assert read_jsonl(tmp_path / "labels.judgments.jsonl") == []

    restarted = LabelSession(pairs, tmp_path / "labels.jsonl")  # a new server on the same files
    assert restarted.current("a").pair.pair_id == second
    assert restarted.current("b").pair.pair_id == first  # another annotator starts at the beginning
    assert restarted.progress("a")["done"] == 1


def test_a_torn_judgment_file_is_rebuilt_and_a_foreign_file_is_refused(tmp_path, pairs_file):
    session = LabelSession(load_pairs(pairs_file), tmp_path / "labels.jsonl")
    session.label("annotator", session.current("annotator").pair.pair_id, "right", reason="why")
    (tmp_path / "labels.judgments.jsonl").write_text('{"prompt": "torn')  # a kill mid-append
    with open(tmp_path / "labels.jsonl", "a") as handle:
        handle.write('{"prompt": "torn')
    store = LabelStore(tmp_path / "labels.jsonl")
    assert len(read_jsonl(tmp_path / "labels.judgments.jsonl")) == 1
    assert len(store.preferences) == 1 and (tmp_path / "labels.jsonl").read_text().endswith("}\n")
    with pytest.raises(ValueError, match="not an alignkit label"):
        LabelStore(pairs_file)
    with pytest.raises(ValueError, match="must end with .jsonl"):
        LabelStore(tmp_path / "labels.json")
