"""PageRank against hand-worked values, and the aggregation of votes into a moral graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.configs import ConfigError
from alignkit.io import append_jsonl
from alignkit.label.moral_graph import MoralGraphStore, aggregate, load_scenario, pagerank
from alignkit.label.moral_report import export

SAMPLE = Path(__file__).resolve().parents[2] / "alignkit" / "label" / "samples" / "moral_scenario.yaml"


def test_pagerank_hand_worked():
    # A -> B, B dangling, d = 0.85: r_A = 0.075 + 0.425 r_B and r_A + r_B = 1 -> r_B = 0.925 / 1.425
    ranks = pagerank(["A", "B"], {("A", "B"): 1.0})
    assert ranks["B"] == pytest.approx(0.925 / 1.425) and ranks["A"] == pytest.approx(0.5 / 1.425)
    # a 3-cycle is symmetric whatever the weights' scale
    cycle = pagerank(["a", "b", "c"], {("a", "b"): 2.0, ("b", "c"): 2.0, ("c", "a"): 2.0})
    assert all(v == pytest.approx(1 / 3) for v in cycle.values())
    # weights split a node's rank: A sends 2/3 of 0.85 r_A to B and 1/3 to C; B and C are dangling and spread
    # theirs evenly. With s = r_B + r_C = 1 - r_A: r_A = 0.05 + 0.85 s / 3 -> r_A = 1 / 3.85; the common term
    # 0.05 + 0.85 s / 3 equals r_A, so r_B = r_A (1 + 0.85 * 2/3) and r_C = r_A (1 + 0.85 / 3) = 1/3.
    split = pagerank(["A", "B", "C"], {("A", "B"): 1.0, ("A", "C"): 0.5})
    r_a = 1 / 3.85
    assert split == pytest.approx({"A": r_a, "B": r_a * (1 + 1.7 / 3), "C": 1 / 3}, abs=1e-9)


def vote(store, participant, edge, value):
    append_jsonl(store.votes, {"participant": participant, "context": edge.split(":")[0], "edge": edge,
                               "vote": value})


def test_votes_become_weighted_kept_edges_and_a_report(tmp_path):
    scenario = load_scenario(SAMPLE)
    store = MoralGraphStore(tmp_path)
    e1 = "family-choice:protective-honesty->curious-support"
    e2 = "family-choice:respect-for-agency->curious-support"
    e3 = "family-choice:protective-honesty->respect-for-agency"
    for participant, votes in {"p1": ("yes", "yes", "unsure"), "p2": ("yes", "no", "yes"),
                               "p3": ("no", "no", "no")}.items():
        for edge, value in zip((e1, e2, e3), votes, strict=True):
            vote(store, participant, edge, value)
    vote(store, "p3", e1, "yes")  # a changed vote: the latest counts once
    family = aggregate(scenario, store)["contexts"][0]
    edges = {e["id"]: e for e in family["edges"]}
    assert edges[e1]["votes"] == {"yes": 3, "no": 0, "unsure": 0} and edges[e1]["kept"]
    assert not edges[e2]["kept"]  # 1 yes, 2 no
    assert edges[e3]["votes"] == {"yes": 1, "no": 1, "unsure": 1} and not edges[e3]["kept"]  # no majority
    expected = pagerank([n["id"] for n in family["nodes"]], {("protective-honesty", "curious-support"): 1.0})
    assert {n["id"]: n["pagerank"] for n in family["nodes"]} == pytest.approx(expected)
    assert family["top"][0] == "curious-support"
    paths = export(scenario, tmp_path)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "Curious support" in paths["html"].read_text() and "<script" not in paths["html"].read_text()


def test_a_story_naming_an_unknown_value_is_one_clear_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text(SAMPLE.read_text().replace("from: respect-for-agency\n    to: protective-honesty",
                                              "from: respect\n    to: protective-honesty"))
    with pytest.raises(ConfigError, match=r"stories\[3\].from is 'respect'"):
        load_scenario(bad)
