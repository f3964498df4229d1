"""The personality questionnaire the ``steer`` strategy reads: items, their keying, the prompt and answer letters.

An item is a statement completing "You ...", the trait it measures and its keying: ``+`` when agreeing shows
the trait (extraversion: "start conversations with strangers easily"), ``-`` when agreeing shows its
opposite ("prefer to stay in the background at gatherings"). Each item is asked in the manner of PAS (Zhu et
al., "Personality Alignment of Large Language Models", ICLR 2025, arXiv:2408.11779): a statement about "you" and a
five-point accuracy scale answered with one letter, A (very accurate) to E (very inaccurate).

The builtin questionnaire (``samples/traits.jsonl``, ten items for each Big-Five trait) was written for
alignkit in the style of IPIP-NEO items; it is a sample, not a validated inventory. Your own: a JSON Lines
file of ``{"trait", "statement", "keyed": "+"|"-"}`` and optionally ``"split": "train"|"test"``; without
splits, every third item of each trait is held out (used only to report how answers move).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from alignkit.io import read_jsonl

BUILTIN_TRAITS = Path(__file__).parent / "samples" / "traits.jsonl"
LETTERS = ("A", "B", "C", "D", "E")  # A: very accurate ... E: very inaccurate
QUESTION = ('Here is a statement about you: "You {statement}." How accurately does it describe you?\n'
            "A. Very accurate\nB. Moderately accurate\nC. Neither accurate nor inaccurate\n"
            "D. Moderately inaccurate\nE. Very inaccurate\nReply with one letter.")


@dataclass(frozen=True)
class TraitItem:
    trait: str
    statement: str
    keyed: int  # +1: "very accurate" shows the trait; -1: "very inaccurate" does
    held_out: bool

    @property
    def prompt(self) -> str:
        return QUESTION.format(statement=self.statement.strip().rstrip("."))

    @property
    def consistent(self) -> str:
        """The answer letter at the trait's pole."""
        return "A" if self.keyed > 0 else "E"

    @property
    def opposite(self) -> str:
        return "E" if self.keyed > 0 else "A"


def load_traits(path: str | Path | None = None) -> list[TraitItem]:
    """The questionnaire at ``path`` (default: the builtin sample), with its train/held-out split."""
    path = Path(path) if path is not None else BUILTIN_TRAITS
    if not path.is_file():
        raise FileNotFoundError(f"traits file {path} not found")
    rows = []
    for number, row in enumerate(read_jsonl(path, tolerate_torn_tail=False), start=1):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with 'trait', 'statement' and 'keyed'")
        for key in ("trait", "statement"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{where}: field '{key}' must be a non-empty string")
        if row.get("keyed") not in ("+", "-"):
            raise ValueError(f"{where}: field 'keyed' must be '+' or '-', got {row.get('keyed')!r}")
        if row.get("split", "train") not in ("train", "test"):
            raise ValueError(f"{where}: field 'split' must be 'train' or 'test', got {row.get('split')!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"traits file {path} holds no items")
    explicit = any("split" in row for row in rows)
    seen: dict[str, int] = defaultdict(int)
    items = []
    for row in rows:
        trait = row["trait"].strip()
        seen[trait] += 1
        held_out = row.get("split") == "test" if explicit else seen[trait] % 3 == 0
        items.append(TraitItem(trait, row["statement"], 1 if row["keyed"] == "+" else -1, held_out))
    return items


def trait_items(items: list[TraitItem], trait: str, held_out: bool) -> list[TraitItem]:
    """One trait's training (or held-out) items; a one-line error naming the known traits otherwise."""
    known = sorted({it.trait for it in items})
    if trait not in known:
        raise ValueError(f"unknown trait {trait!r}; the questionnaire has: {', '.join(known)}")
    chosen = [it for it in items if it.trait == trait and it.held_out == held_out]
    if not chosen:
        raise ValueError(f"trait {trait!r} has no {'held-out' if held_out else 'training'} items")
    return chosen
