"""The labelling output: three JSON Lines files next to each other, every label fsynced before the page moves on.

* ``OUT`` (e.g. ``labels.jsonl``): the strict preferences (left or right better) in TRL's preference format,
  ``prompt``/``chosen``/``rejected`` (+ ``system``), plus ``annotator``, ``user_id``, ``reason``, ``agreement``,
  ``shown_order``, ``decision``, ``pair_id``, ``label_id``, ``shown_at``, ``labelled_at``, ``seconds``: what
  ``alignkit train`` and ``alignkit eval`` read as is (the extra columns land in each record's ``metadata``).
* ``OUT.other.jsonl`` (``labels.other.jsonl``): ties, "both bad" and skips, with both ``responses``; they are
  not preferences, so they stay out of the training file but count as done for resuming.
* ``OUT.judgments.jsonl``: each free-text reason as a CUT-style judgment (``prompt``, ``response``,
  ``judgment``): the critique of the rejected response, or of both responses when both are bad. It is a view
  of the two files above, appended as labels come and rebuilt when the store opens, so a crash between two
  appends or in an undo can never leave it disagreeing with them.

Appends go through :func:`alignkit.io.append_jsonl` (flushed and fsynced); an undo rewrites the one file that
holds the label atomically. A kill can tear only the last line being written; the store cuts it off when it
opens, before appending.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.io import append_jsonl, read_jsonl, write_jsonl

PREFERENCES = ("left", "right")
DECISIONS = ("left", "right", "tie", "both_bad", "skip")


def sibling(out: Path, name: str) -> Path:
    """``labels.jsonl`` -> ``labels.NAME.jsonl``."""
    return out.with_name(f"{out.name.removesuffix('.jsonl')}.{name}.jsonl")


def drop_torn_tail(path: Path) -> None:
    """Rewrite ``path`` without the torn last line a kill mid-append leaves, so the next append starts on a
    line of its own instead of gluing onto the fragment."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        write_jsonl(path, read_jsonl(path))


def judgments_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The CUT-style judgments a label's reason gives (none without a reason, or for a tie or a skip)."""
    reason = (row.get("reason") or "").strip()
    if not reason:
        return []
    if row["decision"] in PREFERENCES:
        criticised = [row["rejected"]]
    elif row["decision"] == "both_bad":
        criticised = list(row["responses"])
    else:
        return []
    system = {"system": row["system"]} if row.get("system") else {}
    return [{"prompt": row["prompt"], **system, "response": response, "judgment": reason,
             "annotator": row["annotator"], "label_id": row["label_id"]} for response in criticised]


class LabelStore:
    """Every label of an output file, in memory and on disk; one process owns the files while it serves."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        if not self.out.name.endswith(".jsonl"):
            raise ValueError(f"--out {self.out}: the labels file must end with .jsonl")
        self.other = sibling(self.out, "other")
        self.judgments = sibling(self.out, "judgments")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.preferences = self._read(self.out)
        self.others = self._read(self.other)
        self._rebuild_judgments()

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        drop_torn_tail(path)
        rows = read_jsonl(path) if path.is_file() else []
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or "label_id" not in row or row.get("decision") not in DECISIONS:
                raise ValueError(f"{path}: row {number} is not an alignkit label (no label_id/decision); "
                                 "give --out a new file or one written by alignkit label")
        return rows

    def _rebuild_judgments(self) -> None:
        expected = [j for row in self.rows() for j in judgments_of(row)]
        current = read_jsonl(self.judgments) if self.judgments.is_file() else []
        if current != expected and (expected or self.judgments.is_file()):
            write_jsonl(self.judgments, expected)

    def rows(self) -> list[dict[str, Any]]:
        """Every label, oldest first."""
        return sorted(self.preferences + self.others, key=lambda r: r["labelled_at"])

    def done(self, annotator: str) -> set[str]:
        """The pair ids ``annotator`` has labelled (skips included)."""
        return {r["pair_id"] for r in self.preferences + self.others if r["annotator"] == annotator}

    def add(self, row: dict[str, Any]) -> None:
        """Append ``row`` to its file, fsynced, then its judgments."""
        preference = row["decision"] in PREFERENCES
        append_jsonl(self.out if preference else self.other, row)
        (self.preferences if preference else self.others).append(row)
        for judgment in judgments_of(row):
            append_jsonl(self.judgments, judgment)

    def undo(self, annotator: str) -> dict[str, Any] | None:
        """Remove ``annotator``'s newest label (atomically rewriting its file) and return it."""
        mine = [r for r in self.rows() if r["annotator"] == annotator]
        if not mine:
            return None
        last = mine[-1]
        preference = last["decision"] in PREFERENCES
        rows = self.preferences if preference else self.others
        rows.remove(last)
        write_jsonl(self.out if preference else self.other, rows)
        self._rebuild_judgments()
        return last
