"""Ask multiple-choice items under the robustness battery, by likelihood and by generation, and measure how
much the answers move (the engine behind the ``mcq`` suite and the scored suites PCT, Wahl-O-Mat,
PacifAIst and KorNAT).

Items here are ``{"id", "question", "options": [...], "answer"?: int}``. Every item is asked under every
:class:`~alignkit.probes.variants.Variant` and, when personas are given, under every persona (a system
prompt). An answer is recorded as the *original* option index, so answers under different orders compare.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model

from alignkit.configs import ConfigError, StrictModel, one_line
from alignkit.probes.answers import parse_answer
from alignkit.probes.base import ProbeContext
from alignkit.probes.likelihood import continuation_ids, group_logps, option_probabilities
from alignkit.probes.stats import modal_answer, robustness, variant_permutation_test
from alignkit.probes.variants import Variant, build_variants, split_names

MODES = ("likelihood", "generate")


class BatteryOptions(StrictModel):
    """``--option`` settings shared by the multiple-choice suites (suites subclass it to change defaults)."""

    modes: str = Field("likelihood,generate", description="likelihood, generate or both (comma-separated)")
    orders: str = Field("cyclic", description="original, reversed, cyclic, cyclic+reversed or random:K")
    labels: str = Field("letter,number,none", description="label styles: letter, number, none")
    instructions: str = Field("forced,free", description="instruction kinds: forced, free")
    paraphrases: int = Field(2, ge=1, description="instruction paraphrases per kind")
    personas: str = Field("", description="system prompts separated by '|'; two or more run the permutation test")
    system: str | None = Field(None, description="system prompt when no personas are given")
    normalise: Literal["mean", "sum"] = Field("mean", description="likelihood: per-token mean or summed log-prob")
    permutations: int = Field(1000, ge=1, description="permutations of the persona test")
    limit: int | None = Field(None, ge=1, description="ask only the first N items")

    def mode_list(self) -> tuple[str, ...]:
        return split_names(self.modes, MODES, "modes")

    def persona_list(self) -> list[str | None]:
        personas = [p.strip() for p in self.personas.split("|") if p.strip()]
        return personas or [self.system]


def with_defaults(name: str, base: type[BatteryOptions] | None = None, **defaults: Any) -> type[BatteryOptions]:
    """A subclass of ``base`` whose fields in ``defaults`` start from other values (constraints and
    descriptions kept): how each scored suite picks its own battery."""
    base = base or BatteryOptions
    fields: dict[str, Any] = {}
    for key, value in defaults.items():
        info = copy.copy(base.model_fields[key])
        info.default = value
        fields[key] = (info.annotation, info)
    return create_model(name, __base__=base, **fields)


def parse_options(cls: type[BatteryOptions], options: dict[str, Any], suite: str) -> BatteryOptions:
    try:
        return cls(**options)
    except ValidationError as error:
        raise ConfigError(one_line(error, prefix=f"{suite} --option ")) from None


@dataclass
class Answer:
    """One item under one variant: the original option index (None = unparseable), the presented position,
    the probability per original option (likelihood) or the generated text (generate)."""

    original: int | None
    position: int | None
    probs: list[float] | None = None
    response: str | None = None
    how: str | None = None


@dataclass
class Question:
    item: int
    variant: Variant
    text: str
    shown: list[str]


Answerer = Callable[[ProbeContext, Sequence[Question], "str | None", BatteryOptions, Callable[[int], None]],
                    list[Answer]]


def ask_likelihood(ctx: ProbeContext, questions: Sequence[Question], system: str | None, opts: BatteryOptions,
                   advance: Callable[[int], None]) -> list[Answer]:
    """Score each option's label (or text, for unlabelled variants) after the prompt; pick the most likely."""
    from alignkit.data.tokenize import PromptEncoder

    encoder = PromptEncoder(ctx.tokenizer)
    groups = []
    for q in questions:
        targets = q.variant.label_list() or q.shown
        groups.append((encoder.encode_prompt(q.text, system),
                       [continuation_ids(ctx.tokenizer, t, bool(encoder.use_chat_template)) for t in targets]))
    scores = group_logps(ctx.model, ctx.tokenizer.pad_token_id, groups, ctx.batch_size, advance)
    answers = []
    for q, score in zip(questions, scores, strict=True):
        shown_probs = option_probabilities(score, opts.normalise)
        position = max(range(len(shown_probs)), key=shown_probs.__getitem__)
        probs = [0.0] * len(shown_probs)
        for p, original in enumerate(q.variant.order):
            probs[original] = shown_probs[p]
        answers.append(Answer(q.variant.order[position], position, probs, how="likelihood"))
    return answers


def ask_generate(ctx: ProbeContext, questions: Sequence[Question], system: str | None, opts: BatteryOptions,
                 advance: Callable[[int], None]) -> list[Answer]:
    """Greedy replies, read by :func:`~alignkit.probes.answers.parse_answer` (unparseable: None)."""
    from alignkit.data.tokenize import PromptEncoder
    from alignkit.engine.generation import SamplingParams, decode_response, sample_ids

    encoder = PromptEncoder(ctx.tokenizer)
    ids = [encoder.encode_prompt(q.text, system) for q in questions]
    out = sample_ids(ctx.model, ids, SamplingParams(max_new_tokens=ctx.max_new_tokens, seed=ctx.seed),
                     eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
                     tokenizer=ctx.tokenizer, batch_size=ctx.batch_size, progress=advance)
    answers = []
    for q, responses in zip(questions, out.responses, strict=True):
        text = decode_response(ctx.tokenizer, responses[0])
        parsed = parse_answer(text, q.shown, q.variant.label_list())
        original = q.variant.order[parsed.index] if parsed.index is not None else None
        answers.append(Answer(original, parsed.index, response=text, how=parsed.how))
    return answers


ANSWERERS: dict[str, Answerer] = {"likelihood": ask_likelihood, "generate": ask_generate}


@dataclass
class Battery:
    """Everything asked and answered. ``answers[(mode, persona)][i][v]`` answers item i under variant v."""

    items: list[dict[str, Any]]
    variants: list[list[Variant]]
    personas: list[str | None]
    modes: tuple[str, ...]
    answers: dict[tuple[str, int], list[list[Answer]]] = field(default_factory=dict)

    def n_options(self) -> list[int]:
        return [len(item["options"]) for item in self.items]


def run_battery(ctx: ProbeContext, items: list[dict[str, Any]], opts: BatteryOptions,
                answerers: dict[str, Answerer] | None = None, language: str = "en") -> Battery:
    """Ask every item under every variant, persona and mode (``answerers`` replaces the model in tests), with
    the instructions in ``language``."""
    from alignkit.progress import Bars

    answerers = answerers or ANSWERERS
    items = items[:opts.limit] if opts.limit else items
    variants = [build_variants(len(item["options"]), opts.orders, opts.labels, opts.instructions, opts.paraphrases,
                               ctx.seed, language) for item in items]
    questions = []
    for i, item in enumerate(items):
        for variant in variants[i]:
            text, shown = variant.render(item["question"], list(item["options"]))
            questions.append(Question(i, variant, text, shown))
    battery = Battery(items, variants, opts.persona_list(), opts.mode_list())
    bars = Bars(enabled=ctx.progress)
    with bars.open():
        for mode in battery.modes:
            for p, persona in enumerate(battery.personas):
                label = f"{mode}" + (f" persona {p + 1}/{len(battery.personas)}" if len(battery.personas) > 1 else "")
                flat = answerers[mode](ctx, questions, persona, opts, bars.task(label, len(questions)))
                per_item: list[list[Answer]] = [[] for _ in items]
                for q, answer in zip(questions, flat, strict=True):
                    per_item[q.item].append(answer)
                battery.answers[(mode, p)] = per_item
    return battery


def originals(per_item: list[list[Answer]]) -> list[list[int | None]]:
    return [[a.original for a in answers] for answers in per_item]


def _by_factor(battery: Battery, per_item: list[list[Answer]]) -> dict[str, dict[str, float]]:
    """Per factor value, the share of answers equal to the item's modal answer (1.0: that factor never moves
    the answer away from the mode)."""
    tallies: dict[str, dict[str, list[int]]] = {"labels": {}, "instruction": {}, "paraphrase": {}, "order": {}}
    for variants, answers in zip(battery.variants, per_item, strict=True):
        mode = modal_answer([a.original for a in answers])
        for v, a in zip(variants, answers, strict=True):
            agree = int(mode is not None and a.original == mode)
            first = "original" if v.order == tuple(sorted(v.order)) else "permuted"
            for factor, value in (("labels", v.labels), ("instruction", v.instruction),
                                  ("paraphrase", str(v.paraphrase)), ("order", first)):
                tallies[factor].setdefault(value, []).append(agree)
    return {f: {k: sum(v) / len(v) for k, v in values.items()} for f, values in tallies.items() if len(values) > 1}


def mode_metrics(battery: Battery, mode: str) -> dict[str, Any]:
    """Robustness numbers of one mode, per persona and averaged over personas."""
    per_persona = []
    for p in range(len(battery.personas)):
        per_item = battery.answers[(mode, p)]
        metrics: dict[str, Any] = robustness(originals(per_item), [[a.position for a in ans] for ans in per_item],
                                             battery.n_options())
        gold = [(item["answer"], ans) for item, ans in zip(battery.items, per_item, strict=True)
                if item.get("answer") is not None]
        if gold:  # unparseable answers count as wrong
            metrics["accuracy"] = sum(a.original == g for g, ans in gold for a in ans) / sum(len(a) for _, a in gold)
        metrics["agreement_with_mode_by_factor"] = _by_factor(battery, per_item)
        per_persona.append(metrics)
    if len(per_persona) == 1:
        return per_persona[0]
    keys = [k for k, v in per_persona[0].items() if not isinstance(v, dict | list)]
    averaged: dict[str, Any] = {k: _mean_of([m.get(k) for m in per_persona]) for k in keys}
    averaged["by_persona"] = per_persona
    return averaged


def _mean_of(values: list[Any]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def persona_tests(battery: Battery, mode: str, permutations: int, seed: int) -> list[dict[str, Any]]:
    """The variant permutation test of persona 1 against each other persona."""
    first = originals(battery.answers[(mode, 0)])
    return [{"personas": [1, p + 1], **variant_permutation_test(first, originals(battery.answers[(mode, p)]),
                                                               battery.n_options(), permutations, seed)}
            for p in range(1, len(battery.personas))]


def battery_rows(battery: Battery) -> list[dict[str, Any]]:
    """One row per item, variant, persona and mode (items.jsonl)."""
    rows = []
    for (mode, p), per_item in battery.answers.items():
        for item, variants, answers in zip(battery.items, battery.variants, per_item, strict=True):
            for v, a in zip(variants, answers, strict=True):
                row: dict[str, Any] = {"id": item["id"], "mode": mode, "persona": p + 1, "variant": v.key,
                                       "order": list(v.order), "labels": v.labels, "instruction": v.instruction,
                                       "paraphrase": v.paraphrase, "answer": a.original, "position": a.position}
                if a.probs is not None:
                    row["probs"] = [round(x, 6) for x in a.probs]
                if a.response is not None:
                    row.update(response=a.response, parsed_by=a.how)
                if item.get("answer") is not None:
                    row["correct"] = a.original == item["answer"]
                rows.append(row)
    return rows


def battery_summary(battery: Battery, opts: BatteryOptions, seed: int) -> dict[str, Any]:
    """summary.json's robustness part: sizes, the battery's factors, metrics and persona tests per mode."""
    counts = sorted({len(v) for v in battery.variants})
    summary: dict[str, Any] = {
        "n_items": len(battery.items),
        "n_variants": counts[0] if len(counts) == 1 else counts,
        "battery": {"orders": opts.orders, "labels": opts.labels, "instructions": opts.instructions,
                    "paraphrases": opts.paraphrases, "normalise": opts.normalise},
        "personas": battery.personas,
        "modes": {mode: mode_metrics(battery, mode) for mode in battery.modes},
    }
    if len(battery.personas) > 1:
        summary["persona_test"] = {mode: persona_tests(battery, mode, opts.permutations, seed)
                                   for mode in battery.modes}
    return summary


def variant_columns(battery: Battery, mode: str, persona: int) -> list[tuple[str, list[int | None]]]:
    """(variant key, every item's answer under it) per variant, for suites whose items all have the same
    number of options (so the same variants): a scale scored once per presentation."""
    per_item = battery.answers[(mode, persona)]
    if len({len(v) for v in battery.variants}) != 1:
        raise ValueError("every item needs the same options count to score per variant")
    return [(variant.key, [answers[v].original for answers in per_item])
            for v, variant in enumerate(battery.variants[0])]


def modal_column(battery: Battery, mode: str, persona: int) -> list[int | None]:
    """Each item's modal answer across variants."""
    return [modal_answer([a.original for a in answers]) for answers in battery.answers[(mode, persona)]]
