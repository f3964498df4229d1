"""The ``mcq`` suite: value and opinion multiple-choice items asked under the robustness battery.

Items (JSON Lines)::

    {"id": "q1", "question": "...", "options": ["...", "...", "..."], "answer": 2, "scores": {...}}

``answer`` (0-based index of the correct option) and ``scores`` (anything, carried along) are optional.
Each item is asked under option-order permutations, label styles, forced-choice vs free-form instructions
and instruction paraphrases (:mod:`alignkit.probes.variants`), by likelihood and by generation, and the
summary reports consistency, per-item answer entropy, position bias, the unparseable rate and, with two or
more personas, the variant permutation test (:mod:`alignkit.probes.stats`). Khan, Casper and
Hadfield-Menell, "Randomness, Not Representation" (FAccT 2025, arXiv 2503.08688).
"""

from __future__ import annotations

from typing import Any

from alignkit.probes.base import ProbeContext, SuiteResult, item_error, register_suite
from alignkit.probes.battery import BatteryOptions, battery_rows, battery_summary, parse_options, run_battery
from alignkit.probes.report import robustness_figures


def check_choice_item(item: dict[str, Any], question: str = "question", options: str = "options") -> dict[str, Any]:
    """The item as the battery wants it (``id``, ``question``, ``options``, ``answer``), or a one-line error
    naming the file and line."""
    choices = item.get(options)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip()
                                                                    for c in choices):
        raise item_error(item, f"field {options!r} must be a list of at least two non-empty strings")
    if not isinstance(item.get(question), str) or not item[question].strip():
        raise item_error(item, f"field {question!r} must be a non-empty string")
    answer = item.get("answer")
    if answer is not None and (not isinstance(answer, int) or isinstance(answer, bool)
                               or not 0 <= answer < len(choices)):
        raise item_error(item, f"field 'answer' must be an option index in 0..{len(choices) - 1}, got {answer!r}")
    return {**item, "id": str(item.get("id")), "question": item[question], "options": choices, "answer": answer}


@register_suite("mcq", sample="mcq.jsonl", required=("id", "question", "options"), options=BatteryOptions,
                summary="multiple-choice items under the robustness battery: consistency, entropy, position bias, "
                        "persona permutation test")
def mcq_suite(ctx: ProbeContext, items: list[dict[str, Any]]) -> SuiteResult:
    opts = parse_options(BatteryOptions, ctx.options, "mcq")
    battery = run_battery(ctx, [check_choice_item(item) for item in items], opts)
    summary = {"suite": "mcq", **battery_summary(battery, opts, ctx.seed)}
    return SuiteResult(summary, battery_rows(battery), robustness_figures(summary))
