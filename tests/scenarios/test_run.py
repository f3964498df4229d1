"""Running scenarios on a tiny model: batched multi-turn generation, the transcript cache, resume after a
kill, re-scoring without regenerating, the user simulator, prefill."""

from __future__ import annotations

import copy

import pytest

import alignkit.scenarios.run as run_module
from alignkit.io import read_jsonl
from alignkit.scenarios.harness import run_scenario
from alignkit.scenarios.spec import load_scenario
from tests.scenarios.conftest import MINI


def _count_generation(monkeypatch) -> list[int]:
    """Count the conversations the target generates replies for (every call of the batched reply step)."""
    calls: list[int] = []
    original = run_module._reply_batch

    def counting(speaker, conversations, *args, **kwargs):
        calls.append(len(conversations))
        return original(speaker, conversations, *args, **kwargs)

    monkeypatch.setattr(run_module, "_reply_batch", counting)
    return calls


def test_multi_turn_transcripts_hold_the_exact_prompts(write_scenario, target, tmp_path):
    tree = copy.deepcopy(MINI)
    tree["turns"] = ["{question}", "Are you sure?"]
    tree["generation"]["prefill"] = "<SCRATCH>"
    scenario, items = load_scenario(write_scenario(tree))
    run_scenario(scenario, items, target, tmp_path / "out", samples=1, progress=False)
    rows = read_jsonl(tmp_path / "out" / "transcripts.jsonl")
    assert len(rows) == 4
    row = next(r for r in rows if r["item_id"] == "a" and r["condition"] == "paid")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["messages"][0]["content"] == "You talk to a paid user."
    assert all(reply.startswith("<SCRATCH>") for reply in row["replies"]) and len(row["replies"]) == 2
    # the second prompt is the chat template over the whole conversation so far, ending in the prefill
    first, second = row["prompts"]
    assert first.endswith("<SCRATCH>") and "What is 2+2?" in first and "Are you sure?" not in first
    assert "Are you sure?" in second and row["replies"][0].removeprefix("<SCRATCH>") in second
    assert second.index("What is 2+2?") < second.index("Are you sure?")


def test_second_run_generates_nothing_and_rescoring_reuses_transcripts(write_scenario, target, tmp_path,
                                                                       monkeypatch):
    calls = _count_generation(monkeypatch)
    path = write_scenario(MINI)
    scenario, items = load_scenario(path)
    first = run_scenario(scenario, items, target, tmp_path / "out", samples=3, progress=False)
    assert sum(calls) == 2 * 2 * 3
    calls.clear()
    again = run_scenario(scenario, items, target, tmp_path / "out", samples=3, progress=False)
    assert calls == []
    assert again["measures"] == first["measures"]
    # change only the scorer: a measure that holds for every reply ("^" always matches)
    tree = copy.deepcopy(MINI)
    tree["measures"].append({"name": "anything", "kind": "regex", "pattern": "^"})
    scenario, items = load_scenario(write_scenario(tree))
    rescored = run_scenario(scenario, items, target, tmp_path / "out", samples=3, progress=False)
    assert calls == []
    assert rescored["measures"]["anything"]["free"]["k"] == 6
    assert len(read_jsonl(tmp_path / "out" / "transcripts.jsonl")) == 12


def test_resume_after_a_kill_regenerates_only_what_was_lost(write_scenario, target, tmp_path, monkeypatch):
    tree = copy.deepcopy(MINI)
    tree["generation"]["batch_size"] = 1  # a conversation per batch, so a kill loses nothing finished
    scenario, items = load_scenario(write_scenario(tree))
    reference = run_scenario(scenario, items, target, tmp_path / "ref", samples=2, progress=False)

    appended = []
    original_append = run_module.append_jsonl

    def killed_after_three(path, row):
        if len(appended) == 3:
            raise KeyboardInterrupt("killed")
        appended.append(row["key"])
        original_append(path, row)

    monkeypatch.setattr(run_module, "append_jsonl", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, items, target, tmp_path / "out", samples=2, progress=False)
    assert len(read_jsonl(tmp_path / "out" / "transcripts.jsonl")) == 3
    monkeypatch.setattr(run_module, "append_jsonl", original_append)
    calls = _count_generation(monkeypatch)
    resumed = run_scenario(scenario, items, target, tmp_path / "out", samples=2, progress=False)
    assert sum(calls) == 8 - 3
    rows = read_jsonl(tmp_path / "out" / "transcripts.jsonl")
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    ref_rows = {r["key"]: r["replies"] for r in read_jsonl(tmp_path / "ref" / "transcripts.jsonl")}
    assert {r["key"]: r["replies"] for r in rows} == ref_rows  # greedy: the same text as an unbroken run
    assert resumed["measures"] == reference["measures"]


def test_torn_last_line_is_dropped_and_regenerated(write_scenario, target, tmp_path, monkeypatch):
    scenario, items = load_scenario(write_scenario(MINI))
    run_scenario(scenario, items, target, tmp_path / "out", progress=False)
    path = tmp_path / "out" / "transcripts.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a kill mid-append
    calls = _count_generation(monkeypatch)
    run_scenario(scenario, items, target, tmp_path / "out", progress=False)
    assert sum(calls) == 1


def test_user_simulator_writes_turns_after_the_script(write_scenario, target, tmp_path):
    tree = copy.deepcopy(MINI)
    tree["simulator"] = {"system": "You are a user curious about: {question}", "turns": 2, "max_new_tokens": 3}
    scenario, items = load_scenario(write_scenario(tree))
    run_scenario(scenario, items, target, tmp_path / "out", progress=False)
    row = read_jsonl(tmp_path / "out" / "transcripts.jsonl")[0]
    assert [m["role"] for m in row["messages"][1:]] == ["user", "assistant"] * 3
    assert len(row["replies"]) == 3 and len(row["prompts"]) == 3


def test_simulator_sees_the_conversation_with_roles_swapped():
    planned = run_module.Planned("k", "a", "c", 0, "target system", ["hi"], {}, {}, "be a user")
    flipped = run_module._flipped(planned, [("user", "hi"), ("assistant", "hello")])
    assert flipped == [{"role": "system", "content": "be a user"}, {"role": "assistant", "content": "hi"},
                       {"role": "user", "content": "hello"}]
