"""What a run directory holds and how a run takes one over without losing anything.

A run directory holds ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``final/``,
``rejected_rows_<split>.jsonl`` and ``trackers/``. A new run never deletes an earlier one by surprise:

* without ``resume`` or ``overwrite``, a directory holding an earlier run is refused before anything heavy
  happens (the check runs before data or model loading);
* with ``overwrite`` the earlier run's files are moved aside into a hidden ``.replaced-<time>`` directory
  and deleted only once the new run has saved its first checkpoint (or finished), so a new run that fails
  early leaves the old one recoverable;
* leftovers of a kill (half-written checkpoint or final directories) are cleared at start.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from alignkit.io import JsonlError, read_jsonl, remove_stale_siblings, write_jsonl

RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "tensorboard", "trackers", "rejected_rows.jsonl")
RUN_GLOBS = ("rejected_rows_*.jsonl",)


class RunDirError(ValueError):
    """The output directory cannot be used as asked; the message says what to do."""


def run_entries(out_dir: Path) -> list[Path]:
    """The files of an earlier run in ``out_dir`` (anything else there is the user's and is left alone)."""
    found = [out_dir / name for name in RUN_ENTRIES if (out_dir / name).exists()]
    for pattern in RUN_GLOBS:
        found += sorted(out_dir.glob(pattern))
    return found


def clear_stale(out_dir: Path, log: Callable[[str], None]) -> None:
    """Remove what a kill left behind: ``checkpoints/.tmp-*`` and ``.tmp-final-*``; restore ``final/`` if a
    kill fell in the middle of swapping it."""
    checkpoints = out_dir / "checkpoints"
    stale = [*checkpoints.glob(".tmp-*"), *checkpoints.glob(".old-*")] if checkpoints.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    stale += remove_stale_siblings(out_dir / "final")
    if stale:
        log(f"removed {len(stale)} half-written director{'y' if len(stale) == 1 else 'ies'} left by an "
            f"interrupted run in {out_dir}")


class ReplacedRun:
    """An earlier run moved aside by ``overwrite``: deleted once the new run has a checkpoint, put back if the
    new run fails before that."""

    def __init__(self, out_dir: Path, aside: Path, log: Callable[[str], None]):
        self.out_dir, self.aside, self.log = out_dir, aside, log

    def discard(self) -> None:
        if self.aside.exists():
            shutil.rmtree(self.aside, ignore_errors=True)
            self.log(f"deleted the replaced run {self.aside}")

    def restore(self) -> None:
        """Put the earlier run back (the new run's own files of the same names are removed first)."""
        if not self.aside.exists():
            return
        for path in self.aside.iterdir():
            target = self.out_dir / path.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            path.rename(target)
        self.aside.rmdir()
        self.log(f"the new run stopped before its first checkpoint: restored the earlier run in {self.out_dir}")


def claim(out_dir: Path, resume: bool, overwrite: bool, log: Callable[[str], None]) -> ReplacedRun | None:
    """Make ``out_dir`` ready for a run; with ``overwrite``, returns the earlier run moved aside."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_stale(out_dir, log)
    if resume:
        return None
    earlier = run_entries(out_dir)
    if not earlier:
        return None
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in earlier)
    if not overwrite:
        raise RunDirError(f"{out_dir} holds an earlier run ({names}); pass --resume to continue it, "
                          "--overwrite to replace it, or choose another output_dir")
    aside = out_dir / f".replaced-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6:06d}"
    aside.mkdir()
    for path in earlier:
        path.rename(aside / path.name)
    log(f"--overwrite: moved the earlier run ({names}) to {aside}; it is deleted once this run has saved its "
        "first checkpoint")
    return ReplacedRun(out_dir, aside, log)


def truncate_metrics(path: Path, step: int, max_steps: int, log: Callable[[str], None]) -> None:
    """On resume from the checkpoint of ``step``, keep the lines an uninterrupted run would have at that
    point: nothing after ``step``, and no final-eval line for ``step == max_steps`` (it is logged again).
    A torn last line (a kill mid-append) is dropped with a warning; any other bad line is an error naming
    ``file:line``."""
    if not path.exists():
        return
    try:
        rows = read_jsonl(path)
    except JsonlError as error:
        raise RunDirError(f"{error}; fix or remove that line, then resume") from None
    kept = [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= step
            and not (r.get("step") == step == max_steps and r.get("split") == "eval")]
    if len(kept) != len(rows):
        log(f"resume: dropped {len(rows) - len(kept)} metrics line(s) logged after the step-{step} checkpoint")
    write_jsonl(path, kept)
