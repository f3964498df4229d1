"""``alignkit probe``: the typer command function, registered in :mod:`alignkit.cli`.

Heavy imports (torch, transformers) happen inside the command so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def _print_suites() -> None:
    from alignkit.probes.base import SUITES, get_suite

    get_suite("mcq")  # imports the package, which registers every suite
    for name in sorted(SUITES):
        suite = SUITES[name]
        console.print(f"[bold]{name}[/]: {suite.summary}", highlight=False)
        console.print(f"  sample items: {suite.sample or '-'}; required fields: {', '.join(suite.required) or '-'}",
                      highlight=False)
        fields = getattr(suite.options, "model_fields", {}) if suite.options else {}
        for key, field in fields.items():
            console.print(f"  --option {key}={field.default!r}: {field.description or ''}", highlight=False)


def probe_command(
    model: Annotated[str | None, typer.Argument(help="builtin name, model/adapter directory, .gguf file or hub "
                                                     "id")] = None,
    suite: Annotated[str | None, typer.Option("--suite", help="probe suite (see --list)")] = None,
    items: Annotated[Path | None, typer.Option("--items", help="items file (JSON Lines); default: the suite's "
                                                               "shipped sample")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output directory (default runs/probes/SUITE)")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="judge model for suites that use one")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="suite setting key=value (repeatable)")] = None,
    list_suites: Annotated[bool, typer.Option("--list", help="print every suite with its options, then exit")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty output directory")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per generated answer", min=1)] = 64,
    batch_size: Annotated[int, typer.Option(help="prompts per batch", min=1)] = 8,
    seed: Annotated[int, typer.Option(help="seed (variants, sampling, permutation test)")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="weights dtype")] = "float32",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
) -> None:
    """Probe a model's values, opinions and honesty with one suite; writes summary.json, items.jsonl, PNG
    charts and report.html to --out."""
    if list_suites:
        _print_suites()
        return
    if model is None or suite is None:
        raise ValueError("give a MODEL and --suite NAME (or --list to see the suites)")
    from alignkit.probes.run import parse_option_values, run_probe

    summary = run_probe(model, suite, items, out, judge=judge, options=parse_option_values(option),
                        overwrite=overwrite, device=device, dtype=dtype, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, seed=seed, progress=progress,
                        log=lambda m: console.print(m, highlight=False))
    shown = {k: v for k, v in summary.items() if k != "run"}
    console.print_json(json.dumps(shown, default=str))
