"""The probe harness's contract: a suite is a function ``(ProbeContext, items) -> SuiteResult`` registered by
name; :func:`alignkit.probes.run.run_probe` loads the model, reads the items (a documented JSONL format per
suite, or the suite's shipped sample file), calls the suite and writes ``OUT/{summary.json, items.jsonl,
*.png, report.html}``.

Suites know nothing of files or the CLI: they get items as dicts and return numbers, rows and figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "samples"


@dataclass
class ProbeContext:
    """What a suite may use. ``judge`` is an :class:`alignkit.rewards.judge.LMJudge`-like object or None;
    ``options`` are the suite's ``key=value`` settings from the CLI (already parsed to int/float/bool/str)."""

    model: Any
    tokenizer: Any
    device: Any = "cpu"
    judge: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    max_new_tokens: int = 64
    seed: int = 0
    progress: bool = False
    log: Callable[[str], None] = print


@dataclass
class SuiteResult:
    """``summary`` goes to summary.json (numbers, CIs, counts); ``rows`` to items.jsonl (one per item and
    variant); ``figures`` are (file stem, matplotlib Figure) pairs saved as PNG and shown in the report."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    figures: list[tuple[str, Any]] = field(default_factory=list)


SuiteFn = Callable[[ProbeContext, list[dict[str, Any]]], SuiteResult]


@dataclass(frozen=True)
class Suite:
    name: str
    run: SuiteFn
    sample: str | None  # file name under alignkit/probes/samples/, used when --items is not given
    summary: str  # one line for `alignkit probe --list`
    required: tuple[str, ...] = ()  # item fields every row must have (checked with file:line errors)
    options: type | None = None  # a pydantic model of the suite's --option keys: checked before the model loads


# run_probe stores where each item came from ("items.jsonl:12") under this key, so suites can name the line
WHERE = "_where"


def item_error(item: dict[str, Any], message: str) -> ValueError:
    """A one-line error about one item, naming its file and line (``raise item_error(item, "...")``)."""
    where = item.get(WHERE) or f"item {item.get('id', '?')}"
    return ValueError(f"{where}: {message}")


SUITES: dict[str, Suite] = {}


def register_suite(name: str, *, summary: str, sample: str | None = None,
                   required: tuple[str, ...] = (), options: type | None = None) -> Callable[[SuiteFn], SuiteFn]:
    def wrap(fn: SuiteFn) -> SuiteFn:
        if name in SUITES:
            raise ValueError(f"probe suite {name!r} is registered twice")
        SUITES[name] = Suite(name, fn, sample, summary, required, options)
        return fn
    return wrap


def get_suite(name: str) -> Suite:
    import alignkit.probes  # noqa: F401 - importing the package registers every suite module

    if name not in SUITES:
        raise ValueError(f"unknown probe suite {name!r}; choose one of: {', '.join(sorted(SUITES))}")
    return SUITES[name]
