"""Put scenario runs side by side: one row per measure x condition (and difference), one column per run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (run `alignkit scenario run ... --out {run_dir}`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg})") from None


def cell(stats: dict[str, Any]) -> str:
    """``rate [lo, hi] (n)`` with rates in percent."""
    if not stats or not stats.get("n"):
        return "-"
    return f"{100 * stats['rate']:.1f}% [{100 * stats['lo']:.1f}, {100 * stats['hi']:.1f}] (n={stats['n']})"


def difference_cell(diff: dict[str, Any] | None) -> str:
    if not diff or diff.get("value") != diff.get("value"):  # NaN: a condition had no values
        return "-"
    return f"{100 * diff['value']:+.1f} pts [{100 * diff['lo']:+.1f}, {100 * diff['hi']:+.1f}]"


def comparison_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    """Rows ``[what, condition, cell per run]`` over the union of measures and conditions, in first-seen order."""
    rows: list[list[str]] = []
    seen: list[tuple[str, str]] = []
    for s in summaries:
        for measure, by_condition in s.get("measures", {}).items():
            for condition in by_condition:
                if (measure, condition) not in seen:
                    seen.append((measure, condition))
    for measure, condition in seen:
        rows.append([measure, condition, *(cell(s.get("measures", {}).get(measure, {}).get(condition, {}))
                                           for s in summaries)])
    names: list[str] = []
    for s in summaries:
        names += [n for n in s.get("differences", {}) if n not in names]
    for name in names:
        rows.append([name, "difference", *(difference_cell(s.get("differences", {}).get(name)) for s in summaries)])
    return rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
