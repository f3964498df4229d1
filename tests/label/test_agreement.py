"""Cohen's and Fleiss' kappa against hand-worked values, and the report `alignkit data inspect` prints."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.data import load_records
from alignkit.label.agreement import agreement_lines, agreement_summary, cohen_kappa, fleiss_kappa, ratings_of


def test_cohen_kappa_hand_worked():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_yes = 25/50 * 30/50 = 0.3, p_no = 25/50 * 20/50 = 0.2, p_e = 0.5; kappa = 0.2/0.5 = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["x", "x"], ["x", "x"]))


def test_fleiss_kappa_hand_worked():
    # Fleiss (1971)'s worked layout: 10 items, 14 raters, 5 categories; P_bar = 0.378, P_e = 0.213 -> 0.210.
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-4)
    # two raters, two items, a tiny case by hand: item 1 agree (P=1), item 2 disagree (P=0): P_bar = 0.5;
    # shares (3/4, 1/4): P_e = 10/16; kappa = (0.5 - 0.625) / 0.375 = -1/3
    assert fleiss_kappa([[2, 0], [1, 1]]) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        fleiss_kappa([[1, 0]])


def _row(annotator, prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "annotator": annotator}


def test_ratings_match_a_pair_in_either_order_and_report(tmp_path):
    rows = [  # ann1 and ann2 agree on q1 and q2 (stored either way round), disagree on q3; q4 has one annotator
        _row("ann1", "q1", "good", "bad"), _row("ann2", "q1", "good", "bad"),
        _row("ann1", "q2", "x", "y"), _row("ann2", "q2", "x", "y"),
        _row("ann1", "q3", "a", "b"), _row("ann2", "q3", "b", "a"),
        _row("ann1", "q4", "c", "d"),
    ]
    ratings = ratings_of(rows)
    assert len(ratings) == 4
    summary = agreement_summary(ratings)
    assert summary["items"] == 3 and summary["annotators"] == 2
    # labels per item as (ann1, ann2) in canonical order: q1 second/second ("bad" < "good"), q2 first/first,
    # q3 first/second. Cohen: p_o = 2/3; ann1 first 2/3, ann2 first 1/3 -> p_e = 2/9 + 2/9 = 4/9; k = (2/9)/(5/9)
    assert summary["cohen_kappa"]["ann1 / ann2"]["kappa"] == pytest.approx(0.4)
    assert summary["fleiss_kappa"] == pytest.approx(fleiss_kappa([[0, 2], [2, 0], [1, 1]]))
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = agreement_lines(load_records(path, log=None).records)  # what `alignkit data inspect` prints
    assert "3 pairs labelled by >= 2 of 2 annotators" in lines[0] and "0.400" in lines[1]
    assert agreement_lines([_row("solo", "q", "a", "b")]) == []
