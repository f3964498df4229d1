"""alignkit.io: atomic file and directory writes keep the old content on failure; JSON Lines reading drops
only a torn last line and names file:line for any other bad line."""

from __future__ import annotations

import os

import pytest

from alignkit.io import (
    JsonlError,
    append_jsonl,
    atomic_directory,
    atomic_write_text,
    read_jsonl,
    remove_stale_siblings,
)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    from alignkit.io import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_read_jsonl_drops_only_a_torn_tail(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"a": 2})
    path.write_text(path.read_text() + '{"a": 3')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(JsonlError, match=r"m.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_atomic_directory_swaps_whole_and_recovers_an_interrupted_swap(tmp_path):
    target = tmp_path / "final"
    atomic_directory(target, lambda d: (d / "adapter_config.json").write_text("{}"))
    atomic_directory(target, lambda d: (d / "model.safetensors").write_text("w"))
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    # a kill between moving the old directory aside and renaming the new one in
    os.replace(target, tmp_path / ".old-final-x")
    (tmp_path / ".tmp-final-y").mkdir()
    remove_stale_siblings(target)
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
