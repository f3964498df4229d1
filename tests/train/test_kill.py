"""SIGKILL a tiny training run at random moments (mid-step, mid-checkpoint, mid-metrics append, mid-final
save), then start it again the way a user would (``--resume`` once a checkpoint exists, else
``--overwrite``): the final parameters equal an uninterrupted run's bit for bit, metrics.jsonl holds one
line per step and split, and nothing half-written is left behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def start(out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    extra = {"resume": ["resume=true"], "overwrite": ["overwrite=true"], "fresh": []}[mode]
    return subprocess.Popen([sys.executable, "-m", "tests.train.run_tiny", str(out), *extra], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_to_end(out: Path, mode: str) -> None:
    proc = start(out, mode)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]


def keys(run_dir: Path) -> list[tuple[int, str]]:
    from alignkit.io import read_jsonl

    return [(row["step"], row["split"]) for row in read_jsonl(run_dir / "metrics.jsonl")]


def kill_when(proc: subprocess.Popen, ready, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; False if it finished first."""
    while proc.poll() is None and not ready():
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_identical_weights(tmp_path):
    reference = tmp_path / "uninterrupted"
    run_to_end(reference, "fresh")
    expected = load_file(reference / "final" / "model.safetensors")

    rng = random.Random(0)
    out = tmp_path / "killed"
    metrics = out / "metrics.jsonl"

    def lines() -> int:
        return metrics.read_text().count("\n") if metrics.exists() else 0

    # kill points: during set-up, mid-step after k logged lines, mid-checkpoint, mid-final save
    plan = [
        (lambda: True, rng.uniform(1.0, 3.0)),
        (lambda: lines() >= 2, rng.uniform(0.0, 0.3)),
        (lambda: any(out.glob("checkpoints/.tmp-*")), 0.0),
        (lambda: lines() >= 6, rng.uniform(0.0, 0.3)),
        (lambda: any(out.glob(".tmp-final-*")), 0.0),
        (lambda: lines() >= 9, rng.uniform(0.0, 0.1)),
    ]
    mode, kills = "fresh", 0
    for ready, delay in plan:
        proc = start(out, mode)
        if kill_when(proc, ready, delay):
            kills += 1
        else:
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()[-2000:]
        # what a user does next: resume once there is a checkpoint, else start over (the directory has files)
        mode = "resume" if list(out.glob("checkpoints/step-*")) else "overwrite"
    if not (out / "final" / "model.safetensors").is_file() or mode == "resume":
        run_to_end(out, mode)
    assert kills >= 3
    got = load_file(out / "final" / "model.safetensors")
    assert got.keys() == expected.keys()
    assert all((got[k] == expected[k]).all() for k in expected), "resumed weights differ from the uninterrupted run"
    assert keys(out) == keys(reference)  # one line per step and split, no repeats
    leftovers = [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".old-", ".replaced-"))]
    assert not leftovers
