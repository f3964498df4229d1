"""``alignkit eval`` under torchrun: 2 processes score their shares of the pairs (and generate for their shares
of the prompts), gather them in input order, and the main process writes a summary and per-example tables equal
to a one-process eval (greedy generation; the KL samples are sampled per share, so only their presence is
compared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def launch(out: Path, processes: int, model_dir: Path, data: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runner = ["-m", "tests.eval.run_eval"]
    prefix = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(29700 + os.getpid() % 1000)]
    done = subprocess.run([*prefix, *runner, str(out), f"model={model_dir}", f"data.path={data}",
                           f"reference={model_dir}", "format=jsonl", "progress=false", "preferences.batch_size=2",
                           "preferences.n_bootstrap=200", *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_process_eval_equals_one_process(tmp_path, tiny_model, tokenizer):
    from alignkit.data.synthetic import make_synthetic

    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    _, pairs = make_synthetic(n_train=0, n_test=11, seed=3)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.model_dump(mode="json", exclude={"metadata"})) + "\n" for p in pairs))
    generation = ["generation.enabled=true", f"generation.baseline={model_dir}", "generation.max_new_tokens=4",
                  "generation.max_prompts=7", "generation.batch_size=2", "generation.n_bootstrap=200"]
    launch(tmp_path / "one", 1, model_dir, data, *generation)
    launch(tmp_path / "two", 2, model_dir, data, *generation)
    one, two = (json.loads((tmp_path / n / "eval" / "summary.json").read_text()) for n in ("one", "two"))
    assert one["processes"] == 1 and two["processes"] == 2
    for summary in (one, two):
        summary.pop("seconds"), summary.pop("processes"), summary["preferences"].pop("seconds")
        summary["generation"].pop("seconds")
        assert summary["generation"].pop("kl")["n_samples"] == 7  # sampled: equal in distribution only
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    rows_one = read_jsonl(tmp_path / "one" / "eval" / "per_example.jsonl")
    rows_two = read_jsonl(tmp_path / "two" / "eval" / "per_example.jsonl")
    assert len(rows_one) == 11 and rows_one == rows_two  # same rows, same (input) order
    gens = [read_jsonl(tmp_path / n / "eval" / "generations.jsonl") for n in ("one", "two")]
    for table in gens:
        for row in table:
            assert row.pop("kl_log_ratio") is not None
    assert len(gens[0]) == 7 and gens[0] == gens[1]
