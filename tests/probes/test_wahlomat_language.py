"""Wahl-O-Mat asked in English and German: the German wording reaches the model, agreement per party per
language and the shift between languages against hand-worked values."""

from __future__ import annotations

import pytest

from alignkit.configs import ConfigError
from alignkit.probes import battery as battery_module
from alignkit.probes.base import ProbeContext
from alignkit.probes.battery import Answer
from alignkit.probes.scales import wahlomat_suite
from alignkit.probes.variants import build_variants

ITEMS = [{"id": "t1", "statement": "Trains first.", "statement_de": "Züge zuerst.",
          "positions": {"P": "agree", "Q": "neutral"}},
         {"id": "t2", "statement": "Cars first.", "statement_de": "Autos zuerst.",
          "positions": {"P": "disagree", "Q": "agree"}}]
AGREE, DISAGREE = 0, 2


def _by_language(seen):
    """Stub model: agrees with everything asked in German, disagrees with everything in English."""
    def answer(ctx, questions, system, opts, advance):
        out = []
        for q in questions:
            german = q.text.split("\n\n")[1].startswith("Frage:")
            seen.append((german, q.text, tuple(q.shown)))
            pick = AGREE if german else DISAGREE
            out.append(Answer(pick, q.variant.order.index(pick)))
        return out
    return answer


def test_agreement_per_language_and_the_shift(monkeypatch):
    seen: list = []
    monkeypatch.setitem(battery_module.ANSWERERS, "likelihood", _by_language(seen))
    ctx = ProbeContext(None, None, options={"modes": "likelihood", "languages": "en,de"})
    result = wahlomat_suite(ctx, ITEMS)
    s = result.summary
    # en, all Disagree: P 0 + 2 of 4 = 50, Q 1 + 0 of 4 = 25; de, all Agree: P 2 + 0 = 50, Q 1 + 2 = 75
    assert s["by_language"]["en"]["likelihood"]["modal"] == pytest.approx({"P": 50.0, "Q": 25.0})
    assert s["by_language"]["de"]["likelihood"]["modal"] == pytest.approx({"P": 50.0, "Q": 75.0})
    assert s["language_shift"]["de-en"]["likelihood"]["modal"] == pytest.approx({"P": 0.0, "Q": 50.0})
    assert s["agreement"]["likelihood"][0]["modal"] == pytest.approx({"P": 50.0, "Q": 25.0})  # first language
    german = [(text, shown) for is_de, text, shown in seen if is_de]
    assert len(german) == len(seen) // 2 == 2 * len(build_variants(3, "reversed", "letter,none", "forced,free", 2))
    assert all("Züge zuerst." in t or "Autos zuerst." in t for t, _ in german)
    assert all(set(shown) == {"Stimme zu", "Neutral", "Stimme nicht zu"} for _, shown in german)
    assert {r["language"] for r in result.rows} == {"en", "de"}
    assert len({r["variant"] for r in result.rows}) == len(result.rows) // 2  # keys differ by language


def test_german_needs_statement_de_and_known_languages(monkeypatch):
    monkeypatch.setitem(battery_module.ANSWERERS, "likelihood", _by_language([]))
    items = [ITEMS[0], {k: v for k, v in ITEMS[1].items() if k != "statement_de"}]
    with pytest.raises(ValueError, match="statement_de"):
        wahlomat_suite(ProbeContext(None, None, options={"modes": "likelihood", "languages": "en,de"}), items)
    with pytest.raises(ConfigError, match="languages"):
        wahlomat_suite(ProbeContext(None, None, options={"languages": "en,fr"}), ITEMS)


def test_german_instructions_name_the_label_style():
    texts = [v.render("Frage?", ["a", "b"])[0] for v in build_variants(2, "original", "letter,number,none",
                                                                       "forced", 1, language="de")]
    assert "den Buchstaben" in texts[0] and "die Nummer" in texts[1] and "den Text" in texts[2]
    assert all("\n\nFrage: Frage?\nOptionen:\n" in t for t in texts)
