"""Inter-annotator agreement of preference labels: Cohen's kappa per pair of annotators and Fleiss' kappa
over everyone.

* Cohen's kappa (Cohen, "A coefficient of agreement for nominal scales", Educational and Psychological
  Measurement 1960): ``(p_o - p_e) / (1 - p_e)`` over the items both annotators labelled, with ``p_e`` from
  each annotator's own category frequencies.
* Fleiss' kappa (Fleiss, "Measuring nominal scale agreement among many raters", Psychological Bulletin 1971),
  in the usual form for a varying number of raters per item: ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``,
  ``P_bar`` their mean, ``p_j = sum_i n_ij / sum_i n_i``, ``P_e = sum_j p_j^2``, kappa
  ``= (P_bar - P_e) / (1 - P_e)``; with the same number of raters on every item it is Fleiss' original.

Both are undefined (NaN) when chance agreement is 1 (every label in one category).

The item is the pair (prompt, system and the two responses, in either order) and the category is which of
the two responses won, or the decision (``tie``, ``both_bad``, ``skip``) for rows of ``labels.other.jsonl``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

Ratings = dict[str, dict[str, str]]  # item -> annotator -> category


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two annotators' labels of the same items (aligned sequences)."""
    if len(first) != len(second) or not first:
        raise ValueError("cohen_kappa needs two equally long, non-empty label sequences")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    categories = set(first) | set(second)
    expected = sum((list(first).count(c) / n) * (list(second).count(c) / n) for c in categories)
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(counts: Sequence[Sequence[int]] | np.ndarray) -> float:
    """Fleiss' kappa of an items x categories matrix of label counts; every item needs >= 2 labels."""
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError("fleiss_kappa needs a non-empty items x categories matrix")
    raters = table.sum(axis=1)
    if (raters < 2).any():
        raise ValueError("fleiss_kappa: every item needs at least 2 labels")
    per_item = ((table ** 2).sum(axis=1) - raters) / (raters * (raters - 1))
    shares = table.sum(axis=0) / raters.sum()
    expected = float((shares ** 2).sum())
    return math.nan if expected == 1 else (float(per_item.mean()) - expected) / (1 - expected)


def _canonical(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, list):
        value = [v.model_dump() if hasattr(v, "model_dump") else v for v in value]
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def rating_of(row: dict[str, Any]) -> tuple[str, str, str] | None:
    """(item, annotator, category) of one label row (a plain dict), or None without an annotator."""
    annotator = row.get("annotator")
    if not annotator:
        return None
    if "chosen" in row and "rejected" in row:
        sides = sorted([_canonical(row["chosen"]), _canonical(row["rejected"])])
        category = "first" if _canonical(row["chosen"]) == sides[0] else "second"
    elif isinstance(row.get("responses"), list) and len(row["responses"]) == 2 and row.get("decision"):
        sides = sorted(_canonical(r) for r in row["responses"])
        category = str(row["decision"])
    else:
        return None
    item = json.dumps([_canonical(row.get("prompt")), row.get("system"), *sides])
    return item, str(annotator), category


def ratings_of(rows: Iterable[dict[str, Any]]) -> Ratings:
    """Label rows (dicts, or preference records whose ``metadata`` holds the annotator) as ratings."""
    ratings: Ratings = defaultdict(dict)
    for row in rows:
        if hasattr(row, "metadata"):  # a PreferencePair read by load_records
            row = {**row.metadata, "prompt": row.prompt, "system": row.system, "chosen": row.chosen,
                   "rejected": row.rejected}
        rated = rating_of(row)
        if rated is not None:
            item, annotator, category = rated
            ratings[item][annotator] = category
    return dict(ratings)


def agreement_summary(ratings: Ratings) -> dict[str, Any] | None:
    """Fleiss' kappa over items with >= 2 annotators and Cohen's kappa per annotator pair with shared items;
    None when no item has two annotators."""
    shared = {item: by for item, by in ratings.items() if len(by) >= 2}
    if not shared:
        return None
    categories = sorted({c for by in shared.values() for c in by.values()})
    counts = [[list(by.values()).count(c) for c in categories] for by in shared.values()]
    annotators = sorted({a for by in ratings.values() for a in by})
    cohen = {}
    for a, b in itertools.combinations(annotators, 2):
        both = [by for by in ratings.values() if a in by and b in by]
        if both:
            cohen[f"{a} / {b}"] = {"items": len(both),
                                   "kappa": cohen_kappa([by[a] for by in both], [by[b] for by in both])}
    return {"items": len(shared), "annotators": len(annotators), "categories": categories,
            "fleiss_kappa": fleiss_kappa(counts), "cohen_kappa": cohen}


def _fmt(value: float) -> str:
    return "undefined (every label in one category)" if math.isnan(value) else f"{value:.3f}"


def agreement_lines(rows: Iterable[dict[str, Any]]) -> list[str]:
    """What ``alignkit data inspect`` prints: nothing unless some pair has labels from two annotators."""
    summary = agreement_summary(ratings_of(rows))
    if summary is None:
        return []
    lines = [f"inter-annotator agreement: {summary['items']} pairs labelled by >= 2 of {summary['annotators']} "
             f"annotators; Fleiss' kappa {_fmt(summary['fleiss_kappa'])}"]
    lines += [f"  Cohen's kappa {pair}: {_fmt(v['kappa'])} over {v['items']} shared pairs"
              for pair, v in summary["cohen_kappa"].items()]
    return lines
