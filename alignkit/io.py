"""The one place for files that matter: atomic writes (file and directory), JSON Lines read and write.

Every write a user relies on goes through here, so a kill at any moment leaves either the old content or
the new, never a torn file: content goes to a temporary sibling, is flushed and fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows within one filesystem).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets the usual umask modes."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a unique temporary sibling of ``path``, fsync it and rename it over
    ``path``. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write ``rows`` (JSON-serialisable objects) as JSON Lines, atomically."""

    def dump(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    return atomic_write(path, dump)


def append_jsonl(path: str | Path, row: Any) -> None:
    """Append one line and flush it to disk (metrics logs). A kill mid-write can tear only this line, which
    :func:`read_jsonl` then drops with a warning."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class JsonlError(ValueError):
    """A JSON Lines file has a line that is not JSON (other than a torn final line)."""


def read_jsonl(path: str | Path, tolerate_torn_tail: bool = True) -> list[Any]:
    """Every JSON value of a JSON Lines file, blank lines skipped.

    A final line that does not parse and has no newline is what a kill mid-append leaves: with
    ``tolerate_torn_tail`` it is dropped with a warning. Any other bad line raises :class:`JsonlError`
    naming ``file:line``.
    """
    return list(iter_jsonl(path, tolerate_torn_tail))


def iter_jsonl(path: str | Path, tolerate_torn_tail: bool = True) -> Iterator[Any]:
    for _, value in numbered_jsonl(path, tolerate_torn_tail):
        yield value


def numbered_jsonl(path: str | Path, tolerate_torn_tail: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line; see :func:`read_jsonl` for the torn last line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn_candidate = not text.endswith("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            if tolerate_torn_tail and torn_candidate and number == len(lines):
                logger.warning("%s:%d: dropped a torn last line (the writer was interrupted)", path, number)
                return
            raise JsonlError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None


def atomic_directory(target: str | Path, fill: Callable[[Path], Any]) -> Path:
    """Build a directory with ``fill(tmp_dir)`` next to ``target`` and swap it in whole: the old directory
    (if any) is moved aside, the new one renamed into place, then the old one deleted. A kill leaves either
    the old or the new directory at ``target`` (plus a hidden ``.tmp-``/``.old-`` sibling that
    :func:`remove_stale_siblings` clears)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        _publish_mode(tmp, directory=True)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        old.rmdir()
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove_stale_siblings(target: str | Path) -> list[Path]:
    """Remove ``.tmp-NAME-*`` / ``.old-NAME-*`` leftovers of an interrupted :func:`atomic_directory`; when
    the kill fell between moving the old directory aside and renaming the new one in, the old one is put
    back instead of removed."""
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    olds = sorted(target.parent.glob(f".old-{target.name}-*"))
    if not target.exists() and len(olds) == 1:
        os.replace(olds[0], target)
    for prefix in (f".tmp-{target.name}-", f".old-{target.name}-"):
        for stale in target.parent.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
