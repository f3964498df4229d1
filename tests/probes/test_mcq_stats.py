"""Robustness statistics against hand-worked values, and the battery run with stub answerers."""

from __future__ import annotations

import math

import pytest

from alignkit.probes import battery as battery_module
from alignkit.probes.base import ProbeContext
from alignkit.probes.battery import Answer
from alignkit.probes.mcq import mcq_suite
from alignkit.probes.stats import robustness, variant_permutation_test
from alignkit.probes.variants import build_variants, option_orders

ITEMS = [{"id": f"q{i}", "question": f"question {i}?", "options": ["w", "x", "y", "z"], "answer": 2}
         for i in range(5)]


def test_robustness_hand_worked():
    # one item, 3 options, four variants: answers 0, 0, 1 and one unparseable; picked positions 0, 2, 0
    out = robustness([[0, 0, 1, None]], [[0, 2, 0, None]], [3])
    assert out["consistency"] == pytest.approx(2 / 3)
    assert out["entropy_bits"] == pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3))
    assert out["normalised_entropy"] == pytest.approx(out["entropy_bits"] / math.log2(3))
    assert out["unparseable_rate"] == pytest.approx(0.25)
    assert out["first_position_rate"] == pytest.approx(2 / 3)
    assert out["last_position_rate"] == pytest.approx(1 / 3)
    assert out["position_bias"] == pytest.approx((2 / 3 - 1 / 3) / (1 - 1 / 3))


def test_cyclic_orders_are_balanced():
    orders = option_orders(4, "cyclic")
    assert sorted(o[0] for o in orders) == [0, 1, 2, 3]
    assert len(build_variants(4, "cyclic", "letter,number,none", "forced,free", 2)) == 4 * 3 * 2 * 2
    assert option_orders(3, "reversed") == [(0, 1, 2), (2, 1, 0)]
    with pytest.raises(ValueError, match="orders must be one of"):
        option_orders(3, "shuffled")


def _stub(pick):
    """An answerer that takes the presented position ``pick(question)`` for every question."""

    def answer(ctx, questions, system, opts, advance):
        out = []
        for q in questions:
            position = pick(q)
            out.append(Answer(q.variant.order[position], position, response=str(position), how="stub"))
        advance(len(questions))
        return out

    return answer


def _run(monkeypatch, pick, **options):
    monkeypatch.setitem(battery_module.ANSWERERS, "likelihood", _stub(pick))
    ctx = ProbeContext(model=None, tokenizer=None, options={"modes": "likelihood", **options})
    return mcq_suite(ctx, [dict(item) for item in ITEMS])


def test_always_first_option_has_position_bias_one_and_chance_consistency(monkeypatch):
    result = _run(monkeypatch, lambda q: 0)
    metrics = result.summary["modes"]["likelihood"]
    assert result.summary["n_items"] == 5 and result.summary["n_variants"] == 4 * 3 * 2 * 2
    assert metrics["position_bias"] == pytest.approx(1.0)
    assert metrics["consistency"] == pytest.approx(1 / 4)  # each option first in a quarter of the variants
    assert metrics["normalised_entropy"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(1 / 4)
    assert metrics["unparseable_rate"] == 0.0
    assert len(result.rows) == 5 * 48


def test_content_driven_answers_are_consistent_without_position_bias(monkeypatch):
    result = _run(monkeypatch, lambda q: q.variant.order.index(2))  # always the option whose text is "y"
    metrics = result.summary["modes"]["likelihood"]
    assert metrics["consistency"] == pytest.approx(1.0)
    assert metrics["position_bias"] == pytest.approx(0.0)
    assert metrics["entropy_bits"] == pytest.approx(0.0)
    assert metrics["accuracy"] == pytest.approx(1.0)


def test_always_last_option_is_position_bias_one(monkeypatch):
    result = _run(monkeypatch, lambda q: len(q.shown) - 1, orders="reversed", labels="letter", instructions="forced",
                  paraphrases=1)
    assert result.summary["modes"]["likelihood"]["position_bias"] == pytest.approx(1.0)
    assert result.summary["modes"]["likelihood"]["consistency"] == pytest.approx(0.5)


def test_persona_permutation_test_through_the_suite(monkeypatch):
    # persona 1 always answers "y" (index 2), persona 2 always "z" (index 3): a real difference
    calls = []

    def by_persona(ctx, questions, system, opts, advance):
        calls.append(system)
        target = 2 if system == "p1" else 3
        return [Answer(target, q.variant.order.index(target)) for q in questions]

    monkeypatch.setitem(battery_module.ANSWERERS, "likelihood", by_persona)
    ctx = ProbeContext(model=None, tokenizer=None, options={"modes": "likelihood", "personas": "p1|p2",
                                                             "permutations": 200})
    summary = mcq_suite(ctx, [dict(item) for item in ITEMS]).summary
    assert calls == ["p1", "p2"]
    test = summary["persona_test"]["likelihood"][0]
    assert test["distance"] == pytest.approx(1.0)
    assert test["p_value"] == pytest.approx(1 / 201)


def test_permutation_test_same_groups_and_noise():
    same = [[0, 1, 2, 0, 1, 2]] * 4
    out = variant_permutation_test(same, same, [3] * 4, permutations=300, seed=1)
    assert out["distance"] == pytest.approx(0.0) and out["p_value"] == pytest.approx(1.0)
    # answers that follow the variant (position) and not the group: the difference is within noise
    a = [[0, 1, 0, 1, 0, 1, 0, 1]] * 6
    b = [[1, 0, 1, 0, 1, 0, 1, 0]] * 6
    noisy = variant_permutation_test(a, b, [2] * 6, permutations=500, seed=0)
    assert noisy["distance"] == pytest.approx(0.0) and noisy["p_value"] > 0.5
    # a clear difference on 6 items of 8 variants
    clear = variant_permutation_test([[0] * 8] * 6, [[1] * 8] * 6, [2] * 6, permutations=500, seed=0)
    assert clear["distance"] == pytest.approx(1.0) and clear["p_value"] == pytest.approx(1 / 501)
    assert clear["null_mean"] < 0.5


def test_compare_rows_pairs_two_runs_by_item_and_variant():
    def rows(answer_of):
        return [{"id": f"q{i}", "mode": "likelihood", "persona": 1, "variant": f"v{v}", "order": [0, 1, 2],
                 "answer": answer_of(i, v)} for i in range(5) for v in range(6)]

    from alignkit.probes.stats import compare_rows

    same = compare_rows(rows(lambda i, v: v % 3), rows(lambda i, v: v % 3), "likelihood", permutations=100)
    assert same["items"] == 5 and same["distance"] == pytest.approx(0.0) and same["p_value"] == pytest.approx(1.0)
    apart = compare_rows(rows(lambda i, v: 0), rows(lambda i, v: 2)[:-6], "likelihood", permutations=100)
    assert apart["items"] == 4 and apart["distance"] == pytest.approx(1.0)
    assert apart["p_value"] == pytest.approx(1 / 101)
