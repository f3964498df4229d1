"""KorNAT N-SVA (our reconstruction: neutral-excluded, normalised SVA) against hand-worked values."""

from __future__ import annotations

import pytest

from alignkit.probes.kornat import kornat_scores, n_sva

GROUPS = ["agree", "agree", "neutral", "disagree", "disagree"]
DIST = [0.1, 0.3, 0.2, 0.25, 0.15]  # 80% of respondents gave a non-neutral answer


def test_n_sva_of_one_answer():
    assert n_sva(DIST, 1, GROUPS) == pytest.approx(0.3 / 0.8)
    assert n_sva(DIST, 4, GROUPS) == pytest.approx(0.15 / 0.8)
    assert n_sva(DIST, 2, GROUPS) is None  # the neutral option is left out, not scored
    assert n_sva(DIST, None, GROUPS) == 0.0  # unparseable scores 0, like SVA
    # without a neutral option N-SVA is SVA
    assert n_sva([0.6, 0.4], 1, ["agree", "disagree"]) == pytest.approx(0.4)


def test_n_sva_in_the_summary():
    items = [{"kind": "social", "options": list("abcde"), "distribution": DIST, "groups": GROUPS},
             {"kind": "social", "options": ["x", "y"], "distribution": [0.6, 0.4], "groups": ["agree", "disagree"]}]
    # item 1: 0.375, 0.3125, neutral (left out), unparseable 0; item 2: 0.6
    scores = kornat_scores(items, [[1, 3, 2, None], [0]])
    assert scores["n_sva"] == pytest.approx((0.375 + 0.3125 + 0 + 0.6) / 4)
    assert scores["neutral_answer_rate"] == pytest.approx(1 / 5)
    # SVA counts the neutral answer at its survey share
    assert scores["sva"] == pytest.approx((0.3 + 0.25 + 0.2 + 0 + 0.6) / 5)


def test_n_sva_needs_groups():
    items = [{"kind": "social", "options": ["x", "y"], "distribution": [0.5, 0.5]}]
    scores = kornat_scores(items, [[0]])
    assert scores["n_sva"] is None and scores["neutral_answer_rate"] is None
