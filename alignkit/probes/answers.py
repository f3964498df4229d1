"""Reading a multiple-choice answer out of generated text: a label (``B``, ``(2)``, ``Answer: C``) or an
option's text. What cannot be read unambiguously is reported as unparseable (None), never guessed.

A letter counts only where it cannot be an English word: followed by ``.``, ``)``, ``:`` or the end of the
text, wrapped in brackets, or after a cue such as "answer is", "option" or "I choose". So "A good option
is to wait" is *not* option A. The PacifAIst evaluation script (Herrador, 2025, arXiv 2508.09762) took the
first standalone A-D of the upper-cased response, which reads the article "a" as option A; this parser
is the fix the benchmark needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

NEGATION = r"(?:\bnot|n't|\bno|\bnever)\s+"
CUE = r"(?:answer|option|choice|choose|chose|pick|select|go with)(?:\s+(?:is|would be|will be))?"


@dataclass(frozen=True)
class ParsedAnswer:
    """``index`` is the position of the chosen option as presented (None: unparseable); ``how`` says which
    rule read it ("cue", "label", "text", "bare")."""

    index: int | None
    how: str | None = None


def _normalise(text: str) -> str:
    text = re.sub(r"[*_`#]", "", text)  # markdown emphasis around labels or options
    return " ".join(text.lower().split())


def _label_index(token: str, labels: Sequence[str]) -> int | None:
    lowered = [label.lower() for label in labels]
    return lowered.index(token.lower()) if token.lower() in lowered else None


def _by_cue(text: str, labels: Sequence[str]) -> int | None:
    """"The answer is (B)", "Answer: 2", "I choose option C"; several different cued labels -> None."""
    label = "|".join(re.escape(x) for x in labels)
    # the cue in any case, the label as presented (so "the answer is a matter of..." is no "A")
    pattern = rf"(?i:\b{CUE})\s*[:\-]?\s*(?:(?i:\(({label})\)|\[({label})\])|({label}))(?![\w'])"
    found = {_label_index(next(g for g in m.groups() if g), labels) for m in re.finditer(pattern, text)}
    return found.pop() if len(found) == 1 else None


def _by_leading_label(text: str, labels: Sequence[str]) -> int | None:
    """The reply opens with a label that cannot be a word: "B", "B.", "B)", "(b)", "2:"."""
    label = "|".join(re.escape(x) for x in labels)
    bracketed = re.match(rf"\s*[\(\[]({label})[\)\]]", text, flags=re.IGNORECASE)
    if bracketed:
        return _label_index(bracketed.group(1), labels)
    # case-sensitive: the labels as presented (upper-case letters), so a leading article "a" never counts
    bare = re.match(rf"\s*({label})(?:\s*[.):]|\s*$|\s+[-–—]\s)", text)
    return _label_index(bare.group(1), labels) if bare else None


def _by_text(text: str, options: Sequence[str]) -> int | None:
    """Exactly one option's text appears (longest options matched first, so "Strongly disagree" is not
    also read as "disagree" or "agree")."""
    remaining = _normalise(text)
    hits = set()
    for index in sorted(range(len(options)), key=lambda i: -len(options[i])):
        needle = _normalise(options[index])
        if not needle:
            continue
        pattern = rf"(?<!\w){re.escape(needle)}(?!\w)"
        if re.search(NEGATION + pattern, remaining):
            return None  # "I do not agree": negated option text is not read as that option
        if re.search(pattern, remaining):
            hits.add(index)
            remaining = re.sub(pattern, " ", remaining)
    return hits.pop() if len(hits) == 1 else None


def _by_bare_label(text: str, labels: Sequence[str]) -> int | None:
    """A reply that is only a label, possibly with punctuation ("B", "(3).")."""
    stripped = re.sub(r"[\s.,;:!*()\[\]]", "", text)
    return _label_index(stripped, labels) if stripped else None


def _echoes_options(text: str, labels: Sequence[str]) -> bool:
    """The reply repeats the option list (lines opening with two or more different labels, "A. ...\nB. ..."):
    small models often do, and the leading "A." is then no answer."""
    label = "|".join(re.escape(x) for x in labels)
    return len(set(re.findall(rf"(?m)^\s*({label})[.)]\s", text))) >= 2


def parse_answer(text: str, options: Sequence[str], labels: Sequence[str] | None = None) -> ParsedAnswer:
    """The option chosen in ``text`` (as presented: ``options[i]`` shown with ``labels[i]``).

    A reply that repeats the labelled option list is unparseable. Otherwise the rules in order: a cue
    ("answer is B"), a leading label ("B) ..."), a bare label, exactly one option text; the first rule that
    reads an answer wins, so "A. ... The answer is D" reads D. Without labels (options shown as a plain
    list) only the option text counts.
    """
    if labels and _echoes_options(text, labels):
        return ParsedAnswer(None)
    if labels:
        for how, rule in (("cue", _by_cue), ("label", _by_leading_label), ("bare", _by_bare_label)):
            index = rule(text, labels)
            if index is not None:
                return ParsedAnswer(index, how)
    index = _by_text(text, options)
    return ParsedAnswer(index, "text") if index is not None else ParsedAnswer(None)
