"""Writing an evaluation's output set: ``OUT/eval/{summary.json, per_example.*, generations.*, samples.jsonl,
config.yaml}``.

The set is built in a temporary sibling directory and swapped in whole (:func:`alignkit.io.atomic_directory`):
a kill at any moment leaves either the previous set or the new one, never new per-example rows beside an
old summary, and a table the new run does not produce never survives from an earlier run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml

from alignkit.eval.common import clean
from alignkit.io import atomic_directory, atomic_write, atomic_write_json, remove_stale_siblings, write_jsonl

TableFormat = Literal["parquet", "jsonl"]


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows as Parquet (``.parquet``) or JSON Lines (anything else), atomically."""
    path = Path(path)
    if path.suffix != ".parquet":
        return write_jsonl(path, (clean(row) for row in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for key in columns:
        columns[key] = [clean(row.get(key)) for row in rows]
    return atomic_write(path, lambda tmp: pq.write_table(pa.table(columns), tmp))


def samples_from_generations(generations: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Baseline-versus-model rows for the report's before/after table (``before`` = the baseline's answer),
    or None when the generations had no baseline."""
    if not generations or not any("baseline_response" in g for g in generations):
        return None
    samples = []
    for g in generations:
        row = {"prompt": g["prompt"], "before": g.get("baseline_response"), "after": g["response"]}
        if "verified" in g:
            row.update(verified_before=g.get("baseline_verified"), verified_after=g["verified"])
        samples.append(row)
    return samples


def _shareable(directory: Path) -> None:
    """Temporary files and directories are created private (0600/0700); results are meant to be shared like
    any file the user writes, so give them the permissions of the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def write_result(
    out_dir: str | Path,
    summary: dict[str, Any],
    per_example: list[dict[str, Any]] | None = None,
    generations: list[dict[str, Any]] | None = None,
    fmt: TableFormat = "parquet",
    config: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the output set ``out_dir/eval/`` and swap it in whole (see the module docstring); returns the
    paths. ``samples.jsonl`` (the report's before/after table) is written when the generations have baseline
    answers; ``config.yaml`` when ``config`` (the resolved eval config) is given. A training run's own
    ``out_dir/samples.jsonl`` is never touched."""
    if fmt not in ("parquet", "jsonl"):
        raise ValueError(f"format must be 'parquet' or 'jsonl', got {fmt!r}")
    eval_dir = Path(out_dir) / "eval"
    names: dict[str, str] = {}

    def fill(tmp: Path) -> None:
        for name, rows in (("per_example", per_example), ("generations", generations)):
            if rows is not None:
                names[name] = write_table(rows, tmp / f"{name}.{fmt}").name
        samples = samples_from_generations(generations)
        if samples is not None:
            names["samples"] = write_jsonl(tmp / "samples.jsonl", samples).name
        if config is not None:
            (tmp / "config.yaml").write_text(yaml.safe_dump(clean(config), sort_keys=False), encoding="utf-8")
            names["config"] = "config.yaml"
        names["summary"] = atomic_write_json(tmp / "summary.json", clean(summary)).name
        _shareable(tmp)

    remove_stale_siblings(eval_dir)  # leftovers of an earlier eval killed mid-swap
    atomic_directory(eval_dir, fill)
    return {name: eval_dir / file for name, file in names.items()}
