"""``alignkit scenario run | compare | defence-data | list``: the typer sub-app, registered in :mod:`alignkit.cli`.

Heavy imports (torch, transformers) happen inside the commands so ``alignkit --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
scenario_app = typer.Typer(help="Run scripted scenarios (alignment faking, elicitation, principal-agent, poisoned "
                                "context) and compare runs.", no_args_is_help=True)


def _default_out(scenario: str, model: str) -> Path:
    tag = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(model).name or model)
    return Path("runs") / "scenarios" / f"{Path(scenario).stem}-{tag}"


def _print_summary(summary: dict) -> None:
    from alignkit.scenarios.compare import cell, difference_cell

    table = Table("measure", "condition", "rate [95% CI] (n)", title=f"[bold]{summary['scenario']}[/] "
                  f"({summary['model']})", title_justify="left")
    for measure, by_condition in summary["measures"].items():
        for condition, stats in by_condition.items():
            table.add_row(measure, condition, cell(stats))
    for name, diff in summary["differences"].items():
        table.add_row(name, f"{diff['minuend']} − {diff['subtrahend']}", difference_cell(diff))
    console.print(table)


def run_command(
    scenario: Annotated[str, typer.Argument(help="scenario YAML file, or a builtin pack name (see `list`)")],
    model: Annotated[str, typer.Option("--model", help="builtin name, model/adapter directory, .gguf or hub id")],
    judge: Annotated[str | None, typer.Option("--judge", help="model answering the judge measures' yes/no "
                                                              "criteria")] = None,
    simulator: Annotated[str | None, typer.Option("--simulator", help="user-simulator model (default: the "
                                                                      "target model)")] = None,
    samples: Annotated[int, typer.Option("--samples", help="conversations per item and condition", min=1)] = 1,
    out: Annotated[Path | None, typer.Option("--out", help="output directory (default runs/scenarios/NAME-MODEL); "
                                                           "re-running it resumes and re-scores")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="the first N items only", min=1)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
    overrides: Annotated[list[str] | None, typer.Argument(help="scenario overrides, key=value (e.g. "
                                                               "generation.max_new_tokens=32)")] = None,
) -> None:
    """Run every condition of a scenario; writes transcripts, scores and a summary with 95% intervals."""
    from alignkit.scenarios.harness import load_judge, load_speaker, run_scenario
    from alignkit.scenarios.spec import load_scenario

    spec, items = load_scenario(scenario, overrides)  # a bad file fails before any model loads
    if judge is None and any(m.kind == "judge" for m in spec.measures):
        console.print(f"note: {spec.name} has judge measures; without --judge they are skipped", highlight=False)
        spec = spec.model_copy(update={"measures": [m for m in spec.measures if m.kind != "judge" and
                                                    not set(m.of) & {j.name for j in spec.measures
                                                                     if j.kind == "judge"}]})
    items = items[:limit] if limit else items
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    target = load_speaker(model, device, log=log)
    sim = load_speaker(simulator, device, log=log) if simulator and simulator != model else None
    judge_fn = load_judge(judge, target, device, log=log) if judge else None
    result = run_scenario(spec, items, target, out or _default_out(scenario, model), samples=samples,
                          judge=judge_fn, judge_name=judge, simulator=sim, progress=progress, log=log)
    _print_summary(result)
    console.print(f"written to {out or _default_out(scenario, model)} (generate {result['seconds']['generate']} s, "
                  f"score {result['seconds']['score']} s)", highlight=False)


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="output directories of `alignkit scenario run`")],
    markdown: Annotated[Path | None, typer.Option("--markdown", help="also write the table as Markdown")] = None,
) -> None:
    """Put scenario runs (models, checkpoints) side by side: rate [95% CI] per measure and condition."""
    from alignkit.io import atomic_write_text
    from alignkit.scenarios.compare import comparison_rows, markdown_table, read_summary

    summaries = [read_summary(r) for r in runs]
    headers = ["measure", "condition", *(f"{s.get('model', '?')} ({r.name})" for s, r in zip(summaries, runs,
                                                                                              strict=True))]
    rows = comparison_rows(summaries)
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if markdown is not None:
        atomic_write_text(markdown, markdown_table(headers, rows))
        console.print(f"written to {markdown}", highlight=False)


def defence_command(
    model: Annotated[str, typer.Option("--model", help="the model whose reasoning paths become the data")],
    out: Annotated[Path, typer.Option("--out", help="output directory (pairs.jsonl, sft.jsonl, train configs)")],
    scenario: Annotated[str, typer.Option("--scenario", help="poisoned-context scenario")] = "poisoned_context",
    split: Annotated[str, typer.Option("--split", help="the items' split to build from")] = "train",
    samples: Annotated[int, typer.Option("--samples", help="paths per case and strategy", min=1)] = 1,
    limit: Annotated[int | None, typer.Option("--limit", help="the first N items only", min=1)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
    overrides: Annotated[list[str] | None, typer.Argument(help="scenario overrides, key=value")] = None,
) -> None:
    """Build poisoned-context defence data: SFT and preference pairs from the best and worst reasoning
    strategy per case (Dialectical Alignment, reconstructed)."""
    from alignkit.scenarios.defence import build_defence_data
    from alignkit.scenarios.harness import load_speaker
    from alignkit.scenarios.spec import load_scenario

    spec, items = load_scenario(scenario, [*(overrides or []), f"items_where.split={split}"])
    items = items[:limit] if limit else items
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    build_defence_data(spec, items, load_speaker(model, device, log=log), out, samples=samples, progress=progress,
                       log=log)
    console.print(f"train with: alignkit train -c {out / 'train_sft.yaml'}", highlight=False)


def list_command() -> None:
    """List the builtin scenario packs."""
    from alignkit.scenarios.spec import PACKS, load_scenario

    table = Table()
    table.add_column("pack", no_wrap=True)
    for header in ("conditions", "items", "description"):
        table.add_column(header)
    for path in sorted(PACKS.glob("*.yaml")):
        spec, items = load_scenario(path)
        table.add_row(path.stem, ", ".join(c.name for c in spec.conditions), str(len(items)),
                      spec.description.strip().split("\n")[0])
    console.print(table)


def register(guarded) -> typer.Typer:
    """The sub-app with every command wrapped by the CLI's ``guarded`` (one-line user errors)."""
    scenario_app.command("run")(guarded(run_command))
    scenario_app.command("compare")(guarded(compare_command))
    scenario_app.command("defence-data")(guarded(defence_command))
    scenario_app.command("list")(guarded(list_command))
    return scenario_app
