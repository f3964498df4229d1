"""Grid sweeps: one ordinary training run per grid point, one after another, resumable, with a table and a plot.

``run_sweep("examples/dpo_hh_rlhf.yaml", ["optim.learning_rate=[1e-5,5e-5]", "objectives.0.beta=[0.1,0.3]"],
metric="eval/rewards/accuracies")`` trains every combination (the first axis varies slowest) in
``<out>/<point name>/``, an ordinary run directory (``alignkit report`` and ``alignkit eval`` read it as any
other). Before any training, every point's config is built and validated, so a typo in a key or a bad value
in the last point fails at once with one line.

Resumable: run it again with the same arguments and a *finished* point (``final/`` present and the metric in
the final line of ``metrics.jsonl``) is read, not rerun; an interrupted point continues from its newest
checkpoint through the loop's own resume (a point stopped before its first checkpoint starts again). A point
directory holding a run of another config is refused, never overwritten. After every point the table
(``sweep.csv``, ``sweep.json``) and the plot (``sweep.png``: the metric per point, a heat map for a 2-D grid)
are rewritten atomically, with the best point marked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from alignkit.configs import ConfigError
from alignkit.io import JsonlError, atomic_write, atomic_write_json, atomic_write_text, read_jsonl
from alignkit.train.checkpoint import latest_checkpoint
from alignkit.train.config import TrainConfig, load_config
from alignkit.train.rundir import run_entries

Mode = Literal["max", "min"]
SWEEP_KEYS = ("output_dir", "resume", "overwrite")  # the sweep sets these per point
IGNORED_IN_COMPARISON = ("output_dir", "resume", "overwrite", "progress")  # may differ between invocations
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-5: a string to YAML 1.1, a number to users


@dataclass
class Axis:
    key: str
    values: list[Any]


@dataclass
class Point:
    index: int
    name: str
    values: dict[str, Any]
    config: TrainConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)


@dataclass
class SweepTable:
    metric: str
    mode: Mode
    axes: list[Axis]
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    out_dir: Path


# ---------------------------------------------------------------- the grid


def parse_axis(item: str) -> Axis:
    """``key=[v1, v2, ...]``: the values are a YAML list (``1e-5`` reads as a number)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--grid {item!r}: give key=[value, ...], e.g. optim.learning_rate=[1e-5,5e-5]")
    try:
        values = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"--grid {item!r}: the values are not valid YAML ({problem})") from None
    if not isinstance(values, list):
        raise ConfigError(f"--grid {item!r}: the values must be a YAML list, e.g. {key}=[{raw.strip() or 'a'}, ...]")
    if not values:
        raise ConfigError(f"--grid {item!r}: the list is empty")
    if key.split(".")[0] in SWEEP_KEYS:
        raise ConfigError(f"--grid {item!r}: {key} is set by the sweep for each point; it cannot be a grid axis")
    values = [float(v) if isinstance(v, str) and _NUMBER.fullmatch(v) else v for v in values]
    if len({_text(v) for v in values}) != len(values):
        raise ConfigError(f"--grid {item!r}: a value is repeated")
    return Axis(key, values)


def parse_grid(items: list[str]) -> list[Axis]:
    if not items:
        raise ConfigError("--grid: give at least one axis, e.g. --grid optim.learning_rate=[1e-5,5e-5]")
    axes = [parse_axis(item) for item in items]
    keys = [axis.key for axis in axes]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"--grid: {repeated[0]} is given twice; put all its values in one list")
    return axes


def parse_metric(metric: str) -> tuple[str, str]:
    """``eval/rewards/accuracies`` -> (split ``eval``, key ``rewards/accuracies``) of ``metrics.jsonl``."""
    split, sep, key = metric.partition("/")
    if split not in ("train", "eval") or not sep or not key:
        raise ConfigError(f"--metric {metric!r}: give split/key as metrics.jsonl names it, e.g. "
                          "eval/rewards/accuracies or train/loss")
    return split, key


def _text(value: Any) -> str:
    """A value as a one-line YAML scalar or flow list that reads back as the same value."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


def point_name(values: dict[str, Any]) -> str:
    """A directory name from the point's values (not its position: a changed grid never reuses a directory
    for other values)."""
    name = ",".join(f"{key}={_text(value)}" for key, value in values.items())
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if len(name) > 200:  # file names stop at 255 bytes: keep the start readable, the end unique
        name = f"{name[:180]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def build_points(config_path: str | Path | None, overrides: list[str], axes: list[Axis], out_dir: Path
                 ) -> list[Point]:
    """Every point's validated config, before anything trains."""
    points, total = [], math.prod(len(axis.values) for axis in axes)
    for index, combination in enumerate(itertools.product(*(axis.values for axis in axes))):
        values = {axis.key: value for axis, value in zip(axes, combination, strict=True)}
        name = point_name(values)
        grid = [f"{key}={_text(value)}" for key, value in values.items()]
        try:
            config = load_config(config_path, [*overrides, *grid, f"output_dir={out_dir / name}"])
        except ValueError as error:
            raise ConfigError(f"grid point {index + 1}/{total} ({', '.join(grid)}): {error}") from None
        points.append(Point(index, name, values, config))
    return points


# ---------------------------------------------------------------- what a point directory holds


def final_metrics(run_dir: Path, split: str, step: int) -> dict[str, Any] | None:
    """The last ``split`` line of ``metrics.jsonl`` at ``step`` (the final one of a finished run)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    try:
        rows = read_jsonl(path)
    except JsonlError as error:
        raise ConfigError(f"{error}; fix or remove that line, then run the sweep again") from None
    lines = [r for r in rows if isinstance(r, dict) and r.get("split") == split and r.get("step") == step]
    return lines[-1] if lines else None


def check_same_config(point: Point) -> None:
    """A point directory must hold a run of this point's config: a sweep never resumes or replaces a run it
    did not start (another grid, base config or ``--out`` pointing at a user's run)."""
    path = point.run_dir / "config.yaml"
    if not path.is_file():
        return
    stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    wanted = point.config.model_dump(mode="json")
    for key in IGNORED_IN_COMPARISON:
        stored.pop(key, None)
        wanted.pop(key, None)
    if stored != wanted:
        differing = sorted(k for k in wanted.keys() | stored.keys() if stored.get(k) != wanted.get(k))
        raise ConfigError(f"{point.run_dir} holds a run of another config (differs in {', '.join(differing)}); "
                          "remove that directory or give another --out")


def point_state(point: Point, split: str, key: str) -> Literal["new", "finished", "resume", "restart"]:
    if not run_entries(point.run_dir):
        return "new"
    check_same_config(point)
    final = final_metrics(point.run_dir, split, point.config.max_steps)
    if (point.run_dir / "final").is_dir():  # written after the final metrics lines: the run finished
        if final is None:
            raise ConfigError(f"--metric {split}/{key}: {point.run_dir / 'metrics.jsonl'} has no {split} line at "
                              f"step {point.config.max_steps}" + (" (does the config hold out an eval split?)"
                                                                  if split == "eval" else ""))
        if key not in final:
            keys = ", ".join(f"{split}/{k}" for k in sorted(final) if k not in ("step", "split"))
            raise ConfigError(f"--metric {split}/{key}: not in {point.run_dir / 'metrics.jsonl'} (it has {keys})")
        return "finished"
    return "resume" if latest_checkpoint(point.run_dir) is not None else "restart"


# ---------------------------------------------------------------- the sweep


def run_sweep(config_path: str | Path | None, grid: list[str], metric: str, mode: Mode = "max",
              out_dir: str | Path | None = None, overrides: list[str] | None = None,
              train_point: Callable[[TrainConfig], Any] | None = None,
              log: Callable[[str], None] = print) -> SweepTable:
    """Train every grid point in turn (see the module docstring); ``train_point(config)`` trains one point
    (default: :func:`alignkit.train.loop.train`; tests pass tiny models)."""
    if mode not in ("max", "min"):
        raise ConfigError(f"--mode {mode!r}: choose max or min")
    split, key = parse_metric(metric)
    axes = parse_grid(grid)
    overrides = list(overrides or [])
    base = load_config(config_path, overrides)  # the base alone first: its errors name no grid point
    if base.resume or base.overwrite:
        raise ConfigError("resume/overwrite: the sweep decides per point (finished points are kept, interrupted "
                          "ones resumed); drop these overrides")
    out = Path(out_dir) if out_dir is not None else Path(f"{base.output_dir}-sweep")
    points = build_points(config_path, overrides, axes, out)
    if train_point is None:
        from alignkit.train.loop import train

        def train_point(config: TrainConfig) -> Any:
            return train(config, log=log)

    results: dict[int, dict[str, Any]] = {}
    for point in points:
        where = f"point {point.index + 1}/{len(points)} ({point.name})"
        state = point_state(point, split, key)
        outcome: dict[str, Any] = {"status": "finished"}
        if state == "finished":
            log(f"{where}: finished earlier, not rerun")
        else:
            log(f"{where}: {'resuming' if state == 'resume' else 'training'} in {point.run_dir}")
            outcome = _train(point, state, train_point, log)
            # the metric must be there now (else one line naming the keys the run logs)
            if outcome["status"] == "finished" and point_state(point, split, key) != "finished":
                raise ConfigError(f"{point.run_dir}: training returned without a final/ model")
        if outcome["status"] == "finished":
            final = final_metrics(point.run_dir, split, point.config.max_steps) or {}
            outcome = {"status": "finished", "value": final.get(key)}
        results[point.index] = outcome
        write_table(make_table(points, results, metric, mode, axes, out))
    table = make_table(points, results, metric, mode, axes, out)
    if table.best is not None:
        log(f"best: {table.best['name']} with {metric} = {table.best[metric]:.6g} ({table.best['run_dir']})")
    log(f"table: {out / 'sweep.csv'}, {out / 'sweep.json'}; plot: {out / 'sweep.png'}")
    return table


def _train(point: Point, state: str, train_point: Callable[[TrainConfig], Any], log: Callable[[str], None]
           ) -> dict[str, Any]:
    from alignkit.train.loop import TrainingDiverged

    config = point.config.model_copy(update={"resume": state == "resume", "overwrite": state == "restart"})
    try:
        train_point(config)
    except TrainingDiverged as error:  # a bad point (too high a learning rate) must not end the sweep
        log(f"point {point.name} diverged: {error}")
        return {"status": "diverged", "value": None, "error": str(error)}
    return {"status": "finished", "value": None}


# ---------------------------------------------------------------- table and plot


def make_table(points: list[Point], results: dict[int, dict[str, Any]], metric: str, mode: Mode,
               axes: list[Axis], out_dir: Path) -> SweepTable:
    rows = []
    for point in points:
        result = results.get(point.index, {"status": "pending", "value": None})
        value = result["value"]
        rows.append({"point": point.index, "name": point.name, **point.values,
                     metric: value if isinstance(value, int | float) and math.isfinite(value) else None,
                     "status": result["status"], "best": False, "run_dir": str(point.run_dir),
                     **({"error": result["error"]} if "error" in result else {})})
    scored = [row for row in rows if row[metric] is not None]
    best = None
    if scored:
        best = (max if mode == "max" else min)(scored, key=lambda row: row[metric])  # ties: the first point
        best["best"] = True
    return SweepTable(metric, mode, axes, rows, best, out_dir)


def write_table(table: SweepTable) -> None:
    columns = ["point", *(axis.key for axis in table.axes), table.metric, "status", "best", "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(table.rows)
    atomic_write_text(table.out_dir / "sweep.csv", buffer.getvalue())
    atomic_write_json(table.out_dir / "sweep.json", {
        "metric": table.metric, "mode": table.mode,
        "grid": {axis.key: axis.values for axis in table.axes},
        "best": table.best, "points": table.rows})
    figure = plot_table(table)
    atomic_write(table.out_dir / "sweep.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def plot_table(table: SweepTable):
    """A heat map when exactly two axes have several values, else the metric per point; best marked."""
    from matplotlib.figure import Figure

    varying = [axis for axis in table.axes if len(axis.values) > 1]
    figure = Figure(figsize=(6.4, 4.8))
    ax = figure.add_subplot()
    if len(varying) == 2:
        _heat_map(ax, figure, table, *varying)
    else:
        _per_point(ax, table, varying or table.axes)
    ax.set_title(f"{table.metric} ({table.mode} is best)")
    figure.subplots_adjust(left=0.2, right=0.95, bottom=0.3, top=0.9)
    return figure


def _heat_map(ax, figure, table: SweepTable, rows_axis: Axis, columns_axis: Axis) -> None:
    import numpy as np

    grid = np.full((len(rows_axis.values), len(columns_axis.values)), np.nan)
    for row in table.rows:
        if row[table.metric] is not None:  # with more (one-value) axes, a cell holds its one point
            i = [_text(v) for v in rows_axis.values].index(_text(row[rows_axis.key]))
            j = [_text(v) for v in columns_axis.values].index(_text(row[columns_axis.key]))
            grid[i, j] = row[table.metric]
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=ax)
    ax.set_xticks(range(len(columns_axis.values)), [_text(v) for v in columns_axis.values])
    ax.set_yticks(range(len(rows_axis.values)), [_text(v) for v in rows_axis.values])
    ax.set_xlabel(columns_axis.key)
    ax.set_ylabel(rows_axis.key)
    for (i, j), value in np.ndenumerate(grid):
        best = table.best is not None and _text(table.best[rows_axis.key]) == _text(rows_axis.values[i]) \
            and _text(table.best[columns_axis.key]) == _text(columns_axis.values[j])
        label = "n/a" if math.isnan(value) else f"{value:.4g}" + (" *" if best else "")
        ax.text(j, i, label, ha="center", va="center", color="white" if not best else "red",
                fontweight="bold" if best else "normal")


def _per_point(ax, table: SweepTable, axes: list[Axis]) -> None:
    labels = [", ".join(_text(row[axis.key]) for axis in axes) for row in table.rows]
    values = [row[table.metric] if row[table.metric] is not None else 0.0 for row in table.rows]
    colors = ["#d62728" if row["best"] else ("#1f77b4" if row[table.metric] is not None else "#cccccc")
              for row in table.rows]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right")
    ax.set_xlabel(", ".join(axis.key for axis in axes))
    ax.set_ylabel(table.metric)
    if table.best is not None:
        ax.annotate("best", (table.best["point"], table.best[table.metric]), ha="center", va="bottom",
                    color="#d62728")


__all__ = ["Axis", "Point", "SweepTable", "parse_grid", "parse_metric", "plot_table", "run_sweep"]
