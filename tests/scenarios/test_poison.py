"""Poisoned context: the passages per ratio, the facts file, the defence pairs and that `alignkit train`'s
reader takes them."""

from __future__ import annotations

import re

import pytest

from alignkit.configs import ConfigError
from alignkit.io import read_jsonl
from alignkit.scenarios.poison import build_passages, defence_rows, path_score
from alignkit.scenarios.spec import PACKS, Passages, load_scenario

FACT = {"id": "f", "true_claim": "The sky is blue.", "false_claim": "The sky is green.", "answer": "blue",
        "false_answer": "green"}


@pytest.mark.parametrize("ratio, poisoned", [(0.0, 0), (0.25, 1), (0.5, 2), (0.75, 3), (1.0, 4)])
def test_poison_ratio_sets_the_number_of_false_passages(ratio, poisoned):
    spec = Passages(n=4, framings=["A: {claim}", "B: {claim}"])
    text = build_passages(spec, {**FACT, "poison": ratio}, "here")
    lines = text.split("\n")
    assert len(lines) == 4 and [line.split(":")[0] for line in lines] == [f"Passage {i}" for i in range(1, 5)]
    assert text.count("The sky is green.") == poisoned and text.count("The sky is blue.") == 4 - poisoned
    assert build_passages(spec, {**FACT, "poison": ratio}, "here") == text  # fixed per item and ratio


def test_passages_need_a_ratio_in_range():
    with pytest.raises(ConfigError, match="poison must lie in"):
        build_passages(Passages(), {**FACT, "poison": 1.5}, "here")
    with pytest.raises(ConfigError, match="needs? a number"):
        build_passages(Passages(), dict(FACT), "here")


def test_facts_file_is_consistent_and_has_a_held_out_split():
    facts = read_jsonl(PACKS / "poisoned_facts.jsonl")
    assert len(facts) >= 30 and len({f["id"] for f in facts}) == len(facts)
    assert {f["split"] for f in facts} == {"train", "test"}
    def mentions(text, phrase):  # whole words, as the measures match
        return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None

    for f in facts:
        assert f["answer"].lower() != f["false_answer"].lower()
        assert mentions(f["true_claim"], f["answer"]) and mentions(f["false_claim"], f["false_answer"])
        assert not mentions(f["true_claim"], f["false_answer"]) and not mentions(f["false_claim"], f["answer"])
        assert not mentions(f["question"], f["answer"]) and not mentions(f["question"], f["false_answer"])
    scenario, items = load_scenario("poisoned_context")
    assert all(it["split"] == "test" for it in items)
    assert [c.vars["poison"] for c in scenario.conditions] == [0.0, 0.25, 0.5, 0.75, 1.0]


def _path(strategy, correct, adopted, reply):
    return {"strategy": strategy, "scores": {"correct": correct, "adopted": adopted}, "reply": reply,
            "variables": {**FACT}}


def test_defence_pairs_take_the_best_and_worst_path_per_case():
    cases = {
        ("f", "poison_50#0"): [_path("follow_context", 0.0, 1.0, "green"), _path("dialectical", 1.0, 0.0, "blue"),
                               _path("own_knowledge", 0.0, 0.0, "no idea")],
        ("g", "poison_50#0"): [_path("follow_context", 0.0, 1.0, "green"), _path("own_knowledge", 0.0, 1.0, "green!")],
        ("h", "poison_0#0"): [_path("follow_context", 1.0, 0.0, "blue"), _path("own_knowledge", 1.0, 0.0, "blue.")],
    }
    rows = defence_rows(cases, lambda item, condition: ("sys", f"prompt {item} {condition}"))
    by = {r["id"]: r for r in rows}
    assert by["f|poison_50#0"]["chosen"] == "blue" and by["f|poison_50#0"]["rejected"] == "green"
    assert by["f|poison_50#0"]["chosen_source"] == "dialectical" and by["f|poison_50#0"]["prompt"] == \
        "prompt f poison_50#0"
    # no correct path: the gold dialectical reply, which names the true answer, is chosen
    assert by["g|poison_50#0"]["chosen_source"] == "gold" and "blue" in by["g|poison_50#0"]["chosen"]
    assert "h|poison_0#0" not in by  # both paths equally good: no preference
    assert path_score({"correct": 1.0, "adopted": 0.0}) == 1.0 and path_score({"correct": 0, "adopted": 1}) == -1


def test_defence_pairs_are_read_by_the_training_data_reader(tmp_path):
    from alignkit.data import load_records
    from alignkit.io import write_jsonl

    cases = {("f", "c"): [_path("follow_context", 0.0, 1.0, "green"), _path("dialectical", 1.0, 0.0, "blue")]}
    rows = defence_rows(cases, lambda item, condition: ("You answer questions.", "Passages...\nQuestion: sky?"))
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    records = load_records(tmp_path / "pairs.jsonl", kind="pair").records
    assert len(records) == 1 and records[0].chosen == "blue" and records[0].system == "You answer questions."


def test_defence_builder_end_to_end_on_a_stub_model(target, tmp_path, monkeypatch):
    import alignkit.scenarios.run as run_module
    from alignkit.data import load_records
    from alignkit.scenarios.defence import build_defence_data
    from alignkit.train.config import load_config

    # a stub model that never names an answer: every path scores 0, so every case takes the gold reply
    monkeypatch.setattr(run_module, "_reply_batch", lambda speaker, conversations, *a: (
        ["I am not sure."] * len(conversations), ["prompt"] * len(conversations)))
    scenario, items = load_scenario("poisoned_context", ["items_where.split=train", "generation.max_new_tokens=3"])
    result = build_defence_data(scenario, items[:2], target, tmp_path / "d", progress=False, log=lambda m: None)
    paths = read_jsonl(tmp_path / "d" / "paths" / "transcripts.jsonl")
    assert len(paths) == 2 * 5 * 3  # items x ratios x strategies
    assert all("Passage 1:" in p["messages"][-2]["content"] for p in paths)
    records = load_records(tmp_path / "d" / "pairs.jsonl", kind="pair", log=None).records
    assert len(records) == result["pairs"] == 10 and all(r.rejected == "I am not sure." for r in records)
    assert all("strategy" not in r.prompt and "Answer using the passages" not in r.prompt for r in records)
    assert result["chosen_from"] == {"gold": 10}
    config = load_config(tmp_path / "d" / "train_sft.yaml", [f"output_dir={tmp_path / 'run'}"])
    assert config.data.train == str((tmp_path / "d" / "pairs.jsonl").resolve())


def test_cases_with_only_empty_replies_give_no_pair():
    cases = {("f", "c"): [_path("follow_context", 0.0, 0.0, ""), _path("dialectical", 0.0, 0.0, "  ")],
             ("g", "c"): [_path("follow_context", 0.0, 1.0, ""), _path("dialectical", 0.0, 1.0, "green")]}
    rows = defence_rows(cases, lambda item, condition: ("", "p"))
    assert [(r["id"], r["rejected"]) for r in rows] == [("g|c", "green")]
