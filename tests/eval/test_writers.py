"""The eval output set is swapped in whole: a failure or a kill mid-write never pairs new rows with an old
summary."""

import json
import os
import stat

import pytest

from alignkit.eval import writers
from alignkit.eval.writers import write_result

OLD_ROWS = [{"index": 0, "logp_chosen": -1.0, "logp_rejected": -2.0, "correct": True}]
NEW_ROWS = [{"index": 0, "logp_chosen": -5.0, "logp_rejected": -1.0, "correct": False}]


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def earlier(tmp_path):
    write_result(tmp_path, {"n_examples": 1, "run": "old"}, OLD_ROWS, fmt="jsonl")
    return snapshot(tmp_path / "eval")


def test_a_summary_that_fails_to_write_leaves_the_earlier_set_intact(tmp_path, earlier):
    """The new table is written before the summary; the summary cannot be serialised. The directory must
    still hold the earlier run's rows with the earlier summary (written file by file, it held new rows)."""
    with pytest.raises(TypeError):
        write_result(tmp_path, {"n_examples": 1, "unserialisable": object()}, NEW_ROWS, fmt="jsonl")
    assert snapshot(tmp_path / "eval") == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no temporary directory left behind


def test_a_kill_after_the_table_leaves_the_earlier_set_intact(tmp_path, earlier, monkeypatch):
    def killed(path, obj, indent=2):
        assert (path.parent / "per_example.parquet").is_file()  # the new table is already written
        raise KeyboardInterrupt  # stands in for SIGKILL at this point

    monkeypatch.setattr(writers, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        write_result(tmp_path, {"n_examples": 1, "run": "new"}, NEW_ROWS, fmt="parquet")
    assert snapshot(tmp_path / "eval") == earlier


def test_leftovers_of_a_killed_swap_are_cleared_and_the_new_set_replaces_the_old(tmp_path, earlier):
    stale = tmp_path / ".tmp-eval-killed"
    stale.mkdir()
    (stale / "per_example.jsonl").write_text("{}\n")
    generations = [{"index": 0, "prompt": "q", "response": "a", "baseline_response": "b", "verified": True,
                    "baseline_verified": False}]
    paths = write_result(tmp_path, {"run": "new"}, None, generations, fmt="jsonl", config={"model": "m"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    names = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert names == ["config.yaml", "generations.jsonl", "samples.jsonl", "summary.json"]
    assert json.loads(paths["summary"].read_text()) == {"run": "new"}
    sample = json.loads(paths["samples"].read_text())
    assert sample == {"prompt": "q", "before": "b", "after": "a", "verified_before": False, "verified_after": True}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(paths["summary"].stat().st_mode) == 0o666 & ~umask  # shared like any user file
    assert stat.S_IMODE((tmp_path / "eval").stat().st_mode) == 0o777 & ~umask
