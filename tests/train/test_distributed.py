"""Data parallel on CPU with gloo under torchrun: 2 processes x 2 pairs equal 1 process x 4 pairs (per-step
metrics and final parameters), one writer (one line per step, one final/), and resume with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignkit.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]
COMMON = ["max_steps=4", "eval_every=2", "save_every=2", "optim.learning_rate=1e-5", "data.synthetic.n_train=32"]


def launch(out: Path, processes: int, *overrides: str, cache: Path | None = None, dropout: float = 0.0,
           launcher: str = "torchrun", record_evaluate: bool = False) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TINY_ATTENTION_DROPOUT": str(dropout),
           "TINY_RECORD_EVALUATE": "1" if record_evaluate else ""}
    if cache is not None:
        env["ALIGNKIT_CACHE"] = str(cache)
    if processes == 1:
        command = [sys.executable, "-m", "tests.train.run_tiny"]
    elif launcher == "accelerate":  # the shipped config: 2 processes, started through torchrun even on CPU
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "examples" / "accelerate" / "ddp_cpu.yaml"), "--main_process_port",
                   str(29500 + os.getpid() % 1000), "-m", "tests.train.run_tiny"]
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
                assert x[key] == pytest.approx(y[key], abs=1e-5, rel=1e-6), (x["step"], x["split"], key)
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
def test_accelerate_launch_with_the_shipped_cpu_config_runs_two_processes(tmp_path):
    launch(tmp_path / "one", 1, "batch_size=4")
    launch(tmp_path / "two", 2, "batch_size=2", launcher="accelerate")  # one process would see 2 pairs a step
    assert_same_run(tmp_path / "one", tmp_path / "two")


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


@pytest.mark.slow
def test_resume_restores_every_process_rng_stream(tmp_path):
    """With attention dropout each process draws its own masks (its rows differ in length, so its stream
    advances differently): resuming must give every process back its own RNG state, not the main one's."""
    launch(tmp_path / "straight", 2, "batch_size=2", dropout=0.2)
    launch(tmp_path / "resumed", 2, "batch_size=2", "max_steps=2", dropout=0.2)
    saved = json.loads((tmp_path / "resumed" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert len(saved["rng_per_process"]) == 2 and saved["rng_per_process"][0] != saved["rng_per_process"][1]
    launch(tmp_path / "resumed", 2, "batch_size=2", "resume=true", dropout=0.2)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.slow
def test_whole_set_evaluate_runs_on_the_main_process_and_equals_one_process(tmp_path):
    """DOVE evaluates the whole eval set at once (joint/conditional accuracies): under 2 processes the main
    process alone runs it and shares the numbers, which equal the one-process eval."""
    dove = ("objectives=[{name: dove, beta: 0.1}]", "data.max_eval_examples=7")  # odd: uneven eval batches
    launch(tmp_path / "one", 1, "batch_size=4", *dove)
    launch(tmp_path / "two", 2, "batch_size=2", *dove, record_evaluate=True)
    calls = {p.name: p.read_text().count("call") for p in tmp_path.glob("two.evaluate-rank*")}
    assert calls == {"two.evaluate-rank0": 3}  # steps 0, 2 and 4, on the main process only
    assert_same_run(tmp_path / "one", tmp_path / "two")
    evals = [(m, n) for m, n in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True)
             if m["split"] == "eval"]
    assert len(evals) == 3 and all("accuracy/joint" in n for _, n in evals)
    for m, n in evals:
        assert m["accuracy/joint"] == pytest.approx(n["accuracy/joint"], abs=1e-6)
