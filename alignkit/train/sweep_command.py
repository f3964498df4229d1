"""``alignkit sweep``: the typer command function, registered in :mod:`alignkit.cli` (logic in
:mod:`alignkit.train.sweep`). Heavy imports happen inside the command so ``alignkit --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
SWEEP_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def split_arguments(grid: list[str], extra: list[str]) -> tuple[list[str], list[str]]:
    """(grid axes, base overrides). After ``--grid`` every ``key=[...]`` argument is an axis (the shell hands
    ``--grid a=[1,2] b=[3,4]`` over as one option and one extra argument); other ``key=value`` arguments
    override the config for every point, as in ``alignkit train``. A list-valued setting shared by every
    point is a one-value axis: ``lora.target_modules=[[q_proj,v_proj]]``."""
    axes, overrides = list(grid), []
    for item in extra:
        if item.startswith("-"):
            raise ValueError(f"unknown option {item!r}; see alignkit sweep --help")
        is_axis = "=" in item and item.split("=", 1)[1].lstrip().startswith("[")
        (axes if is_axis else overrides).append(item)
    return axes, overrides


def sweep_command(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("-c", "--config", help="YAML config every point starts from")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="key=\\[v1,v2,...] (a YAML list); more axes "
                                                   "may follow as key=\\[...] arguments")] = None,
    metric: Annotated[str, typer.Option("--metric", help="split/key of metrics.jsonl, read at the last step, "
                                        "e.g. eval/rewards/accuracies or train/loss")] = "eval/rewards/accuracies",
    mode: Annotated[str, typer.Option("--mode", help="max or min: which end of the metric is best")] = "max",
    out: Annotated[Path | None, typer.Option("--out", help="sweep directory (one run directory per point); "
                                             "default: the config's output_dir + '-sweep'")] = None,
) -> None:
    """Train a grid of configs one after another; extra ``key=value`` arguments override the config for every
    point. Run it again to continue: finished points are kept, an interrupted one resumes."""
    from alignkit.train.sweep import run_sweep

    axes, overrides = split_arguments(grid or [], list(ctx.args))
    table = run_sweep(config, axes, metric, mode, out, overrides, log=console.print)
    finished = sum(row["status"] == "finished" for row in table.rows)
    console.print(f"{finished}/{len(table.rows)} points finished; sweep directory: {table.out_dir}")
