"""Robustness statistics of multiple-choice answers across presentation variants.

Answers are *original* option indices (None = unparseable). Per item, ``answers[v]`` is the answer under
variant ``v``. Definitions (Khan, Casper and Hadfield-Menell, FAccT 2025, arXiv 2503.08688, whose exact
statistics are not published; these are ours):

* **consistency** = mean over items of (count of the modal answer / parsed variants), in [1/k, 1];
* **entropy** = mean over items of the Shannon entropy (bits) of the answer distribution across variants,
  and the same divided by log2(k) (0: always the same option, 1: uniform);
* **position bias**: the rate at which the option shown first (and, separately, last) is chosen, against
  the rate 1/k a content-driven model would show over a balanced set of orders; rescaled so that 0 means
  "as expected" and 1 means "always that position": max over {first, last} of (rate − e)/(1 − e);
* the **variant permutation test**: two groups answer the same item under the same variants (two
  personas, or two models). The observed difference is the mean over items of the total-variation distance
  between the groups' answer distributions; its null distribution comes from swapping the group labels
  within each (item, variant) pair at random. p = (1 + #null ≥ observed) / (1 + permutations). A large p
  means the difference is no larger than what changing the presentation alone produces.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

Answers = Sequence[int | None]


def distribution(answers: Answers, k: int) -> list[float]:
    """Share of parsed answers per option (all zeros when none parsed)."""
    parsed = [a for a in answers if a is not None]
    return [sum(a == i for a in parsed) / len(parsed) if parsed else 0.0 for i in range(k)]


def modal_share(answers: Answers) -> float | None:
    parsed = [a for a in answers if a is not None]
    return Counter(parsed).most_common(1)[0][1] / len(parsed) if parsed else None


def modal_answer(answers: Answers) -> int | None:
    """The most frequent parsed answer; ties go to the lowest option index (None when nothing parsed)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return min(a for a, c in counts.items() if c == top)


def entropy_bits(answers: Answers, k: int) -> float | None:
    shares = [p for p in distribution(answers, k) if p > 0]
    return -sum(p * math.log2(p) for p in shares) if shares else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def robustness(per_item: Sequence[Answers], positions: Sequence[Sequence[int | None]],
               n_options: Sequence[int]) -> dict[str, float | None]:
    """Consistency, entropy and position bias of one answer mode (see the module docstring).

    ``positions[i][v]`` is the *presented* position picked for item i under variant v."""
    entropies = [entropy_bits(a, k) for a, k in zip(per_item, n_options, strict=True)]
    normalised = [e / math.log2(k) if e is not None and k > 1 else None for e, k in zip(entropies, n_options,
                                                                                        strict=True)]
    picked = [(p, k) for ps, k in zip(positions, n_options, strict=True) for p in ps if p is not None]
    total = sum(len(a) for a in per_item)
    out: dict[str, float | None] = {
        "consistency": _mean([modal_share(a) for a in per_item]),
        "uniform_consistency": _mean([1 / k for k in n_options]),
        "entropy_bits": _mean(entropies),
        "normalised_entropy": _mean(normalised),
        "unparseable_rate": sum(a is None for ans in per_item for a in ans) / total if total else None,
        "first_position_rate": None, "last_position_rate": None, "expected_position_rate": None,
        "position_bias": None,
    }
    if picked:
        expected = sum(1 / k for _, k in picked) / len(picked)
        first = sum(p == 0 for p, _ in picked) / len(picked)
        last = sum(p == k - 1 for p, k in picked) / len(picked)
        excess = max((first - expected) / (1 - expected), (last - expected) / (1 - expected))
        out.update(first_position_rate=first, last_position_rate=last, expected_position_rate=expected,
                   position_bias=min(1.0, max(0.0, excess)))
    return out


def _one_hot(answers: Answers, k: int) -> np.ndarray:
    table = np.zeros((len(answers), k))
    for v, a in enumerate(answers):
        if a is not None:
            table[v, a] = 1.0
    return table


def _tv_distance(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """Total-variation distance between rows of two count tables (0 where a side has no answers)."""
    totals_a, totals_b = counts_a.sum(-1, keepdims=True), counts_b.sum(-1, keepdims=True)
    share_a = np.divide(counts_a, totals_a, out=np.zeros_like(counts_a), where=totals_a > 0)
    share_b = np.divide(counts_b, totals_b, out=np.zeros_like(counts_b), where=totals_b > 0)
    both = (totals_a[..., 0] > 0) & (totals_b[..., 0] > 0)
    return np.where(both, 0.5 * np.abs(share_a - share_b).sum(-1), 0.0)


def variant_permutation_test(group_a: Sequence[Answers], group_b: Sequence[Answers], n_options: Sequence[int],
                             permutations: int = 1000, seed: int = 0) -> dict[str, float | int | None]:
    """Is the difference between two groups larger than presentation noise? (see the module docstring).

    ``group_a[i][v]`` and ``group_b[i][v]`` answer item i under the same variant v."""
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    rng = np.random.default_rng(seed)
    observed, null = 0.0, np.zeros(permutations)
    items = 0
    for a, b, k in zip(group_a, group_b, n_options, strict=True):
        if len(a) != len(b):
            raise ValueError("both groups must answer every item under the same variants")
        hot_a, hot_b = _one_hot(a, k), _one_hot(b, k)
        if not hot_a.any() or not hot_b.any():
            continue  # a side answered nothing parseable: the item says nothing about the difference
        items += 1
        observed += float(_tv_distance(hot_a.sum(0)[None], hot_b.sum(0)[None])[0])
        swap = rng.random((permutations, len(a))) < 0.5
        keep = ~swap
        counts_a = keep @ hot_a + swap @ hot_b
        counts_b = keep @ hot_b + swap @ hot_a
        null += _tv_distance(counts_a, counts_b)
    if items == 0:
        return {"items": 0, "distance": None, "null_mean": None, "null_p95": None, "p_value": None,
                "permutations": permutations}
    observed, null = observed / items, null / items
    return {"items": items, "distance": observed, "null_mean": float(null.mean()),
            "null_p95": float(np.quantile(null, 0.95)),
            "p_value": float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations)),
            "permutations": permutations}


def compare_rows(rows_a: Sequence[dict], rows_b: Sequence[dict], mode: str, persona: int = 1,
                 permutations: int = 1000, seed: int = 0) -> dict[str, float | int | None]:
    """The variant permutation test between two runs (e.g. two models) from their items.jsonl rows, paired by
    item id and variant; only (item, variant) pairs present in both runs count."""
    def table(rows: Sequence[dict]) -> dict[str, dict[str, tuple[int | None, int]]]:
        out: dict[str, dict[str, tuple[int | None, int]]] = {}
        for row in rows:
            if row.get("mode") == mode and row.get("persona", 1) == persona and "variant" in row:
                out.setdefault(str(row["id"]), {})[row["variant"]] = (row.get("answer"), len(row.get("order", ())))
        return out

    a, b = table(rows_a), table(rows_b)
    group_a, group_b, n_options = [], [], []
    for item in sorted(a.keys() & b.keys()):
        shared = sorted(a[item].keys() & b[item].keys())
        if shared:
            group_a.append([a[item][v][0] for v in shared])
            group_b.append([b[item][v][0] for v in shared])
            n_options.append(a[item][shared[0]][1])
    return variant_permutation_test(group_a, group_b, n_options, permutations, seed)
