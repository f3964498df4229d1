"""The labelling queue, independent of HTTP: which pair an annotator sees next, in which left/right order,
and what a decision writes.

The queue is the input order minus the pairs the annotator already labelled (read back from the output
files), so a restarted server resumes where the annotator stopped and never shows a labelled pair again;
only an undo puts a pair back (first in line). The left/right order is drawn per (seed, annotator, pair)
and recorded with the label as ``shown_order`` (the input positions of the left and right responses).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.label.pairs import LabelPair, messages_of, plain, text_of
from alignkit.label.store import DECISIONS, LabelStore


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclass
class Shown:
    """The pair on an annotator's screen: left is ``responses[order[0]]``."""

    pair: LabelPair
    order: tuple[int, int]
    shown_at: str
    shown_clock: float


@dataclass
class AnnotatorState:
    shown: Shown | None = None
    session_labels: int = 0
    session_start: float = field(default_factory=time.monotonic)


class LabelSession:
    """Pairs, the store and each annotator's current pair. Not thread-safe: the server calls it from one
    event loop."""

    def __init__(self, pairs: list[LabelPair], out: str | Path, *, default_annotator: str = "annotator",
                 agreement_slider: bool = False, seed: int = 0) -> None:
        self.pairs = pairs
        self.by_id = {p.pair_id: p for p in pairs}
        self.store = LabelStore(out)
        self.default_annotator = default_annotator
        self.agreement_slider = agreement_slider
        self.seed = seed
        self.states: dict[str, AnnotatorState] = {}

    def annotator(self, name: str | None) -> str:
        name = (name or "").strip() or self.default_annotator
        if len(name) > 100:
            raise ValueError("annotator name is longer than 100 characters")
        return name

    def _state(self, annotator: str) -> AnnotatorState:
        return self.states.setdefault(annotator, AnnotatorState())

    def _show(self, annotator: str, pair: LabelPair) -> Shown:
        rng = random.Random(f"{self.seed}:{annotator}:{pair.pair_id}")
        shown = Shown(pair, (1, 0) if rng.random() < 0.5 else (0, 1), now_iso(), time.monotonic())
        self._state(annotator).shown = shown
        return shown

    def current(self, annotator: str) -> Shown | None:
        """The pair on the annotator's screen, or the next unlabelled one (None when all are done)."""
        state = self._state(annotator)
        if state.shown is not None:
            return state.shown
        done = self.store.done(annotator)
        pair = next((p for p in self.pairs if p.pair_id not in done), None)
        return self._show(annotator, pair) if pair is not None else None

    def progress(self, annotator: str) -> dict[str, Any]:
        state = self._state(annotator)
        done = len(self.store.done(annotator) & self.by_id.keys())
        minutes = (time.monotonic() - state.session_start) / 60
        rate = state.session_labels / minutes if state.session_labels and minutes > 0 else 0.0
        return {"done": done, "total": len(self.pairs), "per_minute": round(rate, 1)}

    def view(self, annotator: str) -> dict[str, Any]:
        """What the page shows: the current pair (texts, never markup) and the progress."""
        shown = self.current(annotator)
        page: dict[str, Any] = {"annotator": annotator, "agreement_slider": self.agreement_slider,
                                "progress": self.progress(annotator), "can_undo": bool(self._mine(annotator)),
                                "pair": None}
        if shown is not None:
            pair = shown.pair
            left, right = (pair.responses[i] for i in shown.order)
            page["pair"] = {"pair_id": pair.pair_id, "messages": messages_of(pair.prompt, pair.system),
                            "left": text_of(left), "right": text_of(right)}
        return page

    def _mine(self, annotator: str) -> list[dict[str, Any]]:
        return [r for r in self.store.rows() if r["annotator"] == annotator]

    def label(self, annotator: str, pair_id: str, decision: str, reason: str | None = None,
              agreement: float | None = None) -> dict[str, Any]:
        """Write the decision on the shown pair (fsynced) and return the row written."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {list(DECISIONS)}, got {decision!r}")
        shown = self._state(annotator).shown
        if shown is None or shown.pair.pair_id != pair_id:
            raise ValueError(f"pair {pair_id} is not the pair shown to {annotator} (reload the page)")
        if agreement is not None and not 0.5 <= agreement <= 1.0:
            raise ValueError(f"agreement must lie in [0.5, 1], got {agreement}")
        pair, order = shown.pair, shown.order
        labelled_at = now_iso()
        row: dict[str, Any] = {"prompt": plain(pair.prompt), **({"system": pair.system} if pair.system else {})}
        if decision in ("left", "right"):
            better = order[0] if decision == "left" else order[1]
            worse = order[1] if decision == "left" else order[0]
            row["chosen"] = plain(pair.responses[better])
            row["rejected"] = plain(pair.responses[worse])
        else:
            row["responses"] = [plain(r) for r in pair.responses]
            agreement = None  # P(chosen > rejected) means nothing without a chosen response
        row.update({
            "decision": decision, "annotator": annotator, "user_id": annotator,
            "reason": (reason or "").strip() or None, "agreement": agreement,
            "shown_order": [pair.indices[order[0]], pair.indices[order[1]]],
            "pair_id": pair.pair_id, "label_id": f"{annotator}:{pair.pair_id}", "source_row": pair.source_row,
            "shown_at": shown.shown_at, "labelled_at": labelled_at,
            "seconds": round(time.monotonic() - shown.shown_clock, 3),
        })
        self.store.add(row)
        state = self._state(annotator)
        state.shown = None
        state.session_labels += 1
        return row

    def undo(self, annotator: str) -> dict[str, Any] | None:
        """Remove the annotator's last label and show its pair again."""
        removed = self.store.undo(annotator)
        if removed is not None:
            state = self._state(annotator)
            state.session_labels = max(0, state.session_labels - 1)
            pair = self.by_id.get(removed["pair_id"])
            state.shown = self._show(annotator, pair) if pair is not None else None
        return removed
