"""Data parallel on CPU with gloo under torchrun: 2 processes x 2 pairs equal 1 process x 4 pairs (per-step
metrics and final parameters), one writer (one line per step, one final/), and resume with 2 processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignkit.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]
COMMON = ["max_steps=4", "eval_every=2", "save_every=2", "optim.learning_rate=1e-5", "data.synthetic.n_train=32"]


def launch(out: Path, processes: int, *overrides: str, cache: Path | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["ALIGNKIT_CACHE"] = str(cache)
    if processes == 1:
        command = [sys.executable, "-m", "tests.train.run_tiny"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(29500 + os.getpid() % 1000), "-m", "tests.train.run_tiny"]
    done = subprocess.run([*command, str(out), *COMMON, *overrides], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def metrics(run: Path) -> list[dict]:
    return read_jsonl(run / "metrics.jsonl")


def assert_same_run(one: Path, two: Path) -> None:
    a, b = metrics(one), metrics(two)
    assert [(m["step"], m["split"]) for m in a] == [(m["step"], m["split"]) for m in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/chosen"):
            if key == "rewards/accuracies" and (x["step"], x["split"]) in ((0, "eval"), (1, "train")):
                continue  # policy = reference until the first update: every margin is 0 up to rounding
            if key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-5), (x["step"], x["split"], key)
    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() <= 1e-5, name


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    launch(tmp_path / "one", 1, "batch_size=4")
    launch(tmp_path / "two", 2, "batch_size=2")
    assert_same_run(tmp_path / "one", tmp_path / "two")
    steps = [m["step"] for m in metrics(tmp_path / "two") if m["split"] == "train"]
    assert steps == [1, 2, 3, 4]  # one writer: one line per step
    assert not list((tmp_path / "two").glob(".tmp-*"))


@pytest.mark.slow
def test_precomputed_reference_is_computed_in_shares_and_equals_one_process(tmp_path):
    launch(tmp_path / "one", 1, "batch_size=4", "reference=precomputed", cache=tmp_path / "cache-one")
    launch(tmp_path / "two", 2, "batch_size=2", "reference=precomputed", cache=tmp_path / "cache-two")
    assert_same_run(tmp_path / "one", tmp_path / "two")
    tables = {p.name: load_file(p) for p in (tmp_path / "cache-one" / "reference_logps").glob("*.safetensors")}
    shared = {p.name: load_file(p) for p in (tmp_path / "cache-two" / "reference_logps").glob("*.safetensors")}
    assert tables.keys() == shared.keys() and len(tables) == 2  # same keys: independent of the process count
    for name, table in tables.items():
        assert (table["logps"] - shared[name]["logps"]).abs().max() <= 1e-4, name


@pytest.mark.slow
def test_two_process_resume_equals_uninterrupted(tmp_path):
    launch(tmp_path / "one", 1, "batch_size=4")
    launch(tmp_path / "two", 2, "batch_size=2", "max_steps=2")  # stops after its step-2 checkpoint ...
    launch(tmp_path / "two", 2, "batch_size=2", "resume=true")  # ... and continues to step 4
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_resuming_with_another_process_count_is_one_clear_error(tmp_path):
    launch(tmp_path / "two", 2, "batch_size=2", "max_steps=2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tests.train.run_tiny", str(tmp_path / "two"), *COMMON,
                           "batch_size=2", "resume=true"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "resume with the same number of processes" in done.stderr


def test_eval_batches_split_across_processes_add_up_to_the_whole(tmp_path, tokenizer):
    import torch

    from alignkit.models import tiny_llama
    from alignkit.train.config import load_config
    from alignkit.train.methods import BatchContext, build_method

    config = load_config(None, [f"output_dir={tmp_path}", "objectives=[{name: simpo}]", "batch_size=2",
                                "data.synthetic.n_train=16", "data.synthetic.n_test=10", "lora.enabled=false"])
    method = build_method(config)
    _, items = method.load(tokenizer, tmp_path, lambda m: None)
    ctx = BatchContext(tiny_llama(tokenizer), None, tokenizer.pad_token_id, 1024, None, torch.device("cpu"),
                       tokenizer)
    whole, n = method.evaluate_sums(ctx, items, 2, None, {})
    parts = [method.evaluate_sums(ctx, items, 2, None, {}, rank=r, world=2) for r in range(2)]
    assert 0 < parts[0][1] < n and parts[0][1] + parts[1][1] == n  # each process did part of the work
    for key, value in whole.items():
        assert parts[0][0][key] + parts[1][0][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
