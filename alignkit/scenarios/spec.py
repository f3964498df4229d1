"""The scenario file: a YAML schema (strict pydantic models) and the plan of conversations it describes.

A scenario is a system prompt and user turns (templates over item and condition variables), a list of
conditions (named variable settings, e.g. ``tier: free | paid``), items (one per question or script), what
to record from the replies (tags, regexes) and how to score them (measures). Each item x condition x
sample is one conversation. Errors are one line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from alignkit.configs import ConfigError, StrictModel, apply_overrides, one_line, read_yaml_mapping
from alignkit.io import read_jsonl

PACKS = Path(__file__).resolve().parent / "packs"
Scalar = str | int | float | bool


class Generation(StrictModel):
    max_new_tokens: int = Field(128, ge=1, description="tokens per assistant reply")
    do_sample: bool = True
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    prefill: str = Field("", description="text every assistant reply starts with (kept in the reply)")
    batch_size: int = Field(8, ge=1, description="conversations per generation batch")
    seed: int = 0


class Condition(StrictModel):
    name: str = Field(min_length=1)
    vars: dict[str, Scalar] = Field(default_factory=dict)


class Simulator(StrictModel):
    """A user-simulator model that writes the user turns after the scripted ones."""

    system: str = Field(min_length=1, description="the simulated user's instructions (a template)")
    turns: int = Field(1, ge=1, description="simulated user turns after the scripted ones")
    max_new_tokens: int = Field(64, ge=1)


class Passages(StrictModel):
    """Retrieved passages of which a share (the condition variable ``ratio_var``) states the false claim."""

    n: int = Field(4, ge=1)
    true_key: str = "true_claim"
    false_key: str = "false_claim"
    ratio_var: str = "poison"
    framings: list[str] = Field(default_factory=lambda: ["{claim}"], min_length=1)


class Record(StrictModel):
    """A field parsed from the replies: the text inside ``<tag>...</tag>`` or a regex's first group."""

    name: str = Field(min_length=1)
    tag: str | None = None
    regex: str | None = None
    source: Literal["final", "all"] = "final"

    @model_validator(mode="after")
    def _one_parser(self) -> Record:
        if (self.tag is None) == (self.regex is None):
            raise ValueError("give exactly one of 'tag' or 'regex'")
        if self.regex is not None:
            _compile(self.regex)
        return self


class Measure(StrictModel):
    """One number per conversation (1/0 for binary measures; None leaves the conversation out).

    kinds: ``regex`` (pattern found in the field), ``contains`` (any of ``any_of`` and none of ``none_of``,
    case-insensitive whole words, templated), ``equals`` (field equals ``value``), ``judge`` (a judge
    answers yes to every one of ``criteria``), ``verifier`` (``module:function(text, vars)``), ``mean``
    (average of the measures in ``of``).
    """

    name: str = Field(min_length=1)
    kind: Literal["regex", "contains", "equals", "judge", "verifier", "mean"]
    field: str = "final"
    pattern: str | None = None
    any_of: list[str] = Field(default_factory=list)
    none_of: list[str] = Field(default_factory=list)
    value: str | None = None
    criteria: list[str] = Field(default_factory=list)
    verifier: str | None = None
    of: list[str] = Field(default_factory=list)
    negate: bool = False
    conditions: list[str] | None = Field(None, description="score only these conditions")
    missing: Literal["zero", "skip"] = Field("zero", description="field absent: count 0, or leave out")

    @model_validator(mode="after")
    def _needs(self) -> Measure:
        need = {"regex": "pattern", "contains": "any_of", "equals": "value", "judge": "criteria",
                "verifier": "verifier", "mean": "of"}[self.kind]
        if not getattr(self, need):
            raise ValueError(f"a {self.kind} measure needs '{need}'")
        if self.pattern is not None:
            _compile(self.pattern)
        return self


class Difference(StrictModel):
    """``measure`` in condition ``minuend`` minus in ``subtrahend`` (bootstrap CI)."""

    name: str = Field(min_length=1)
    measure: str
    minuend: str
    subtrahend: str


class Scenario(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    system: str = ""
    conditions: list[Condition] = Field(min_length=1)
    items: list[dict[str, Any]] = Field(default_factory=list)
    items_file: str | None = Field(None, description="JSONL of items, relative to the scenario file")
    items_where: dict[str, Scalar] = Field(default_factory=dict, description="keep items with these values")
    turns: list[str] = Field(default_factory=list, description="scripted user turns; an item's 'turns' (a list, "
                             "or a mapping of condition name or 'default' to a list) wins")
    simulator: Simulator | None = None
    passages: Passages | None = None
    generation: Generation = Field(default_factory=Generation)
    record: list[Record] = Field(default_factory=list)
    measures: list[Measure] = Field(min_length=1)
    differences: list[Difference] = Field(default_factory=list)
    group_by: list[str] = Field(default_factory=list, description="item keys to break rates down by")

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        conditions = _unique([c.name for c in self.conditions], "conditions")
        measures = _unique([m.name for m in self.measures], "measures")
        fields = {"final", "all"} | set(_unique([r.name for r in self.record], "record"))
        for i, m in enumerate(self.measures):
            if m.kind != "mean" and m.field not in fields:
                raise ValueError(f"measures.{i}.field: {m.field!r} is not recorded (known: {sorted(fields)})")
            for name in m.of:
                if name not in measures[:i]:
                    raise ValueError(f"measures.{i}.of: {name!r} is not an earlier measure")
            for name in m.conditions or []:
                if name not in conditions:
                    raise ValueError(f"measures.{i}.conditions: unknown condition {name!r}")
        for i, d in enumerate(self.differences):
            if d.measure not in measures:
                raise ValueError(f"differences.{i}.measure: unknown measure {d.measure!r}")
            for name in (d.minuend, d.subtrahend):
                if name not in conditions:
                    raise ValueError(f"differences.{i}: unknown condition {name!r}")
        return self


def _unique(names: list[str], where: str) -> list[str]:
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise ValueError(f"{where}: name {seen[0]!r} is used twice")
    return names


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE | re.DOTALL)
    except re.error as error:
        raise ValueError(f"invalid regex {pattern!r} ({error})") from None


def resolve_path(spec: str | Path) -> Path:
    """A scenario file, or the name of a builtin pack (``alignment_faking`` -> packs/alignment_faking.yaml)."""
    path = Path(spec)
    if path.is_file():
        return path
    pack = PACKS / f"{spec}.yaml"
    if pack.is_file() and path.suffix == "":
        return pack
    known = ", ".join(sorted(p.stem for p in PACKS.glob("*.yaml")))
    raise ConfigError(f"{spec}: no such scenario file or builtin pack (packs: {known})")


def load_scenario(spec: str | Path, overrides: list[str] | None = None) -> tuple[Scenario, list[dict[str, Any]]]:
    """The validated scenario and its items (``items`` plus ``items_file``, filtered by ``items_where``)."""
    path = resolve_path(spec)
    tree = apply_overrides(read_yaml_mapping(path), list(overrides or []))
    try:
        scenario = Scenario.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(one_line(error, prefix=f"{path}: ")) from None
    items = list(scenario.items)
    if scenario.items_file:
        items_path = path.parent / scenario.items_file
        if not items_path.is_file():
            raise ConfigError(f"{path}: items_file: {items_path} not found")
        items += read_jsonl(items_path)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: items.{i}: an item must be a mapping of variables")
    items = [it for it in items if all(it.get(k) == v for k, v in scenario.items_where.items())]
    if not items:
        raise ConfigError(f"{path}: no items (give 'items' or 'items_file'; 'items_where' may drop them all)")
    return scenario, items


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def render(template: str, variables: dict[str, Any], where: str) -> str:
    """``{name}`` filled from ``variables`` (``{{``/``}}`` are literal braces); an unknown name is one line."""
    try:
        return string.Formatter().vformat(template, (), _Strict({k: _text(v) for k, v in variables.items()}))
    except KeyError as error:
        raise ConfigError(f"{where}: unknown variable {{{error.args[0]}}} (known: {sorted(variables)})") from None
    except (ValueError, IndexError) as error:
        raise ConfigError(f"{where}: bad template ({error})") from None


def _text(value: Any) -> Any:
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, list | dict) else value


@dataclass
class Planned:
    """One conversation to run: its rendered system prompt and user turns, and its cache key."""

    key: str
    item_id: str
    condition: str
    sample: int
    system: str
    turns: list[str]
    variables: dict[str, Any]
    groups: dict[str, Any] = field(default_factory=dict)
    simulator_system: str | None = None


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts: the cache key of a conversation or a judge call."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def item_variables(scenario: Scenario, item: dict[str, Any], condition: Condition, index: int) -> dict[str, Any]:
    """Item fields, then the condition's variables (themselves templates over the item's fields)."""
    where = f"scenario {scenario.name}: item {item.get('id', index)}, condition {condition.name}"
    variables = {k: v for k, v in item.items() if k != "turns"}
    variables.setdefault("id", str(index))
    for key, value in condition.vars.items():
        variables[key] = render(value, variables, where) if isinstance(value, str) else value
    variables["condition"] = condition.name
    if scenario.passages is not None:
        from alignkit.scenarios.poison import build_passages

        variables["passages"] = build_passages(scenario.passages, variables, where)
    return variables


def plan(scenario: Scenario, items: list[dict[str, Any]], samples: int, model_name: str,
         simulator_name: str | None = None) -> list[Planned]:
    """Every item x condition x sample, each with its key: the models, the exact prompts and the sampling
    settings (what decides the text), so changing only the measures reuses every conversation."""
    gen = scenario.generation.model_dump(exclude={"batch_size"})
    simulator = scenario.simulator.model_dump(exclude={"system"}) if scenario.simulator else None
    out = []
    for index, item in enumerate(items):
        for condition in scenario.conditions:
            variables = item_variables(scenario, item, condition, index)
            where = f"scenario {scenario.name}: item {variables['id']}, condition {condition.name}"
            turns = item.get("turns", scenario.turns)
            if isinstance(turns, dict):  # per-condition scripts: {condition: [...], default: [...]}
                turns = turns.get(condition.name, turns.get("default"))
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise ConfigError(f"{where}: turns must be a non-empty list of user messages")
            system = render(scenario.system, variables, where + ", system")
            rendered = [render(t, variables, f"{where}, turn {k + 1}") for k, t in enumerate(turns)]
            groups = {g: item.get(g) for g in scenario.group_by}
            sim_system = (render(scenario.simulator.system, variables, where + ", simulator.system")
                          if scenario.simulator else None)
            for sample in range(samples):
                key = content_key(model_name, system, rendered, simulator, simulator_name, sim_system, gen, sample)
                out.append(Planned(key, str(variables["id"]), condition.name, sample, system, rendered, variables,
                                   groups, sim_system))
    return out
