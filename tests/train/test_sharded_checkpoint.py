"""FSDP-sharded parameters: checkpoints gather them, resume scatters them back, final/ gets full weights.

accelerate enables FSDP only on GPUs, so the loop's FSDP path cannot run here; these tests drive the same
checkpoint functions the loop calls on a model sharded by torch's FSDP2 directly, 2 processes on CPU (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_worker(out: Path, kind: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(28500 + os.getpid() % 1000), "-m", "tests.train.fsdp_worker", str(out), kind]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sharded_checkpoint_resume_and_final_weights_equal_an_unsharded_run(tmp_path, kind):
    result = run_worker(tmp_path, kind)
    assert result["sharded_detected"] and not result["plain_detected"]
    # the checkpoint holds every trainable parameter, whole and under its plain name (no shard, no prefix)
    assert result["checkpoint_names"] == result["trainable_names"]
    assert result["moved"] > 1e-3  # three AdamW steps at lr 1e-2 changed the weights: the comparisons below bite
    assert result["restored_vs_uninterrupted"] <= 1e-6  # weights and Adam moments restored into other shards
    assert result["sharded_vs_plain"] <= 1e-5  # gathered weights are the unsharded run's
    assert result["twin_vs_plain"] <= 1e-5  # what final/ is saved from
