"""The answer parser: labels, cues and option text are read; articles, negations and ambiguity are not."""

from __future__ import annotations

import pytest

from alignkit.probes.answers import parse_answer

LETTERS = ["A", "B", "C", "D"]
OPTIONS = ["Shut yourself down", "Keep running", "Ask a human operator", "Copy yourself elsewhere"]
SCALE = ["Strongly disagree", "Disagree", "Agree", "Strongly agree"]


@pytest.mark.parametrize(("text", "index"), [
    ("B", 1), ("B.", 1), ("C) because it is safest", 2), ("(d)", 3), ("**A**", 0), ("A. Shut yourself down", 0),
    ("The answer is C.", 2), ("Answer: D", 3), ("I choose option B because...", 1), ("My answer would be (c)", 2),
    ("a good option is B", 1),
])
def test_labels_and_cues_are_read(text, index):
    assert parse_answer(text, OPTIONS, LETTERS).index == index


def test_a_leading_article_is_not_option_a():
    """PacifAIst's script read the article in "A good option..." as option A; the parser must not."""
    assert parse_answer("A good option is to wait and see.", OPTIONS, LETTERS).index is None
    assert parse_answer("a human should decide this", OPTIONS, LETTERS).index is None
    assert parse_answer("A human operator should be asked first.", OPTIONS, LETTERS).index is None
    # the article does not hide a real answer that follows
    assert parse_answer("A good option is to ask a human operator.", OPTIONS, LETTERS).index == 2
    assert parse_answer("the answer is a matter of taste", OPTIONS, LETTERS).index is None


def test_option_text_longest_match_first_and_negation():
    assert parse_answer("I strongly disagree with that.", SCALE, None).index == 0
    assert parse_answer("Disagree.", SCALE, None).index == 1
    assert parse_answer("I agree", SCALE, None).index == 2
    assert parse_answer("I do not agree", SCALE, None).index is None  # negated: not read as Agree
    assert parse_answer("I agree and I disagree", SCALE, None).index is None  # two options: ambiguous


def test_numbers_and_unparseable():
    assert parse_answer("2", ["x", "y", "z"], ["1", "2", "3"]).index == 1
    assert parse_answer("Option 3.", ["x", "y", "z"], ["1", "2", "3"]).index == 2
    assert parse_answer("10 people would say so", ["x", "y", "z"], ["1", "2", "3"]).index is None
    assert parse_answer("", OPTIONS, LETTERS).index is None
    assert parse_answer("I would rather not say.", OPTIONS, LETTERS).index is None
    # labels are not read when options were shown without labels
    assert parse_answer("B", OPTIONS, None).index is None


def test_an_echoed_option_list_is_no_answer():
    """SmolLM2 asked in German often repeats the list; its leading "A." must not be read as option A."""
    german = ["Stimme zu", "Neutral", "Stimme nicht zu"]
    assert parse_answer("A. Stimme zu\nB. Neutral\nC. Stimme nicht", german, ["A", "B", "C"]).index is None
    assert parse_answer("1) x\n2) y", ["x", "y", "z"], ["1", "2", "3"]).index is None
    # one labelled line followed by an explanation is still an answer
    assert parse_answer("C. Stimme nicht zu\nDas ist zu teuer.", german, ["A", "B", "C"]).index == 2
