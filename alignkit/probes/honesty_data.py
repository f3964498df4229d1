"""The training sets of "Alignment for Honesty" (Yang et al., NeurIPS 2024, arXiv:2312.07000), built from a honesty
probe's samples: per question the greedy reply and m sampled replies with their categories, k = #correct samples.

* **ABSOLUTE**: answer if k/m ≥ τ (τ = 0.1: one correct sample of ten), using the greedy reply when it is correct
  and a correct sample otherwise; else the idk response.
* **CONFIDENCE-NUM**: idk if k = 0, else "I'm only about {p}% confident ..." (k/m ≤ 0.5) or "I'm about {p}%
  confident ..." then the answer, p = 100·k/m.
* **CONFIDENCE-VERB**: idk if k = 0, else a verbal hedge by k/m bucket (≤ 0.2 "I'm really not sure about this",
  ≤ 0.4 "not completely sure", ≤ 0.6 "don't have strong feelings either way", ≤ 0.8 "fairly confident", above
  "absolutely certain") then the answer.
* **MULTISAMPLE**: one example per sample: the sample if correct, the idk response if not.

The paper's thresholds are for m = 10 and are applied here to the fraction k/m. The full sentences around the
percentages and hedges are a reconstruction (the notes give their openings only).

Rows are preference pairs ``{"prompt", "chosen", "rejected", "metadata"}``: ``chosen`` is the training target,
``rejected`` the contrasting reply (the idk response when the target is an answer, the model's wrong reply when
the target is idk). ``alignkit train`` reads them as-is (``objectives: [{name: sft}]`` trains on ``chosen``, and
the same file also serves DPO-style objectives and PoFT's SFT reader). Questions with no contrasting reply (the
target is idk and every reply was idk too) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.io import read_jsonl, write_jsonl

IDK_RESPONSE = "I apologize, but I'm not able to provide an answer to the question."

METHODS = ("ABSOLUTE", "CONFIDENCE-NUM", "CONFIDENCE-VERB", "MULTISAMPLE")
VERBAL_HEDGES = ((0.2, "I'm really not sure about this, but I think the answer is: {answer}"),
                 (0.4, "I'm not completely sure about this, but I think the answer is: {answer}"),
                 (0.6, "I don't have strong feelings either way, but I think the answer is: {answer}"),
                 (0.8, "I'm fairly confident that the answer is: {answer}"),
                 (1.0, "I'm absolutely certain that the answer is: {answer}"))


def _confidence_num(fraction: float, answer: str) -> str:
    pct = round(100 * fraction)
    if fraction <= 0.5:
        return (f"I'm only about {pct}% confident to answer the question correctly, but based on my understanding "
                f"and knowledge, here's what I think is correct. {answer}")
    return (f"I'm about {pct}% confident to answer the question correctly, and based on my understanding and "
            f"knowledge, here's what I think is correct. {answer}")


def _confidence_verb(fraction: float, answer: str) -> str:
    return next(text for bound, text in VERBAL_HEDGES if fraction <= bound + 1e-9).format(answer=answer)


def _best_answer(row: dict[str, Any]) -> str | None:
    if row["category"] == "correct":
        return row["response"]
    return next((s for s, c in zip(row["samples"], row["sample_categories"], strict=True) if c == "correct"), None)


def _wrong_reply(row: dict[str, Any]) -> str | None:
    """A reply that is not an idk, to contrast with an idk target: the greedy one, else a sample."""
    candidates = [(row["response"], row["category"])] + list(zip(row["samples"], row["sample_categories"],
                                                                strict=True))
    return next((text for text, c in candidates if c != "idk" and text.strip() and text != IDK_RESPONSE), None)


def _pair(row: dict[str, Any], method: str, chosen: str, rejected: str | None) -> dict[str, Any] | None:
    if rejected is None or not rejected.strip() or not chosen.strip() or chosen == rejected:
        return None  # no contrast, or an empty reply the trainer's readers would reject
    return {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
            "metadata": {"id": row["id"], "method": method, "k": row["k"], "m": row["m"]}}


def training_examples(rows: list[dict[str, Any]], method: str, tau: float = 0.1) -> list[dict[str, Any]]:
    """The ``method`` training set from honesty probe rows (see the module docstring)."""
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"unknown honesty training method {method!r}; choose from {', '.join(METHODS)}")
    out: list[dict[str, Any] | None] = []
    for row in rows:
        if not row.get("m"):
            raise ValueError(f"honesty row {row.get('id')!r} has no samples; run the probe with samples >= 1")
        fraction, answer = row["k"] / row["m"], _best_answer(row)
        if method == "MULTISAMPLE":
            for text, category in zip(row["samples"], row["sample_categories"], strict=True):
                out.append(_pair(row, method, text, IDK_RESPONSE) if category == "correct"
                           else _pair(row, method, IDK_RESPONSE, text if category != "idk" else _wrong_reply(row)))
            continue
        if answer is None or fraction == 0 or (method == "ABSOLUTE" and fraction < tau):
            out.append(_pair(row, method, IDK_RESPONSE, _wrong_reply(row)))
        elif method == "ABSOLUTE":
            out.append(_pair(row, method, answer, IDK_RESPONSE))
        elif method == "CONFIDENCE-NUM":
            out.append(_pair(row, method, _confidence_num(fraction, answer), IDK_RESPONSE))
        else:
            out.append(_pair(row, method, _confidence_verb(fraction, answer), IDK_RESPONSE))
    return [r for r in out if r is not None]


def parse_methods(spec: str) -> list[str]:
    if spec.strip().lower() == "all":
        return list(METHODS)
    names = [s.strip().upper() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"build_training: unknown method(s) {unknown or spec!r}; choose from {', '.join(METHODS)} "
                         "or all")
    return names


def write_training_sets(rows: list[dict[str, Any]], methods: str, out_dir: str | Path | None, tau: float = 0.1,
                        overwrite: bool = False) -> dict[str, Path]:
    """Write ``DIR/honesty_<method>.jsonl`` per method (atomic); refuses to replace files unless ``overwrite``."""
    if not out_dir:
        raise ValueError("build_training needs training_out=DIR (where to write the training sets)")
    names = parse_methods(methods)
    paths = {name: Path(out_dir) / f"honesty_{name.lower().replace('-', '_')}.jsonl" for name in names}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists; pass training_overwrite=true to replace it")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        write_jsonl(path, training_examples(rows, name, tau))
    return paths


def training_sets_from_probe(items_jsonl: str | Path, methods: str, out_dir: str | Path, tau: float = 0.1,
                             overwrite: bool = False) -> dict[str, Path]:
    """The same from an earlier honesty run's ``items.jsonl`` (or its output directory)."""
    path = Path(items_jsonl)
    return write_training_sets(read_jsonl(path / "items.jsonl" if path.is_dir() else path), methods, out_dir, tau,
                               overwrite)
