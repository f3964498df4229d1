"""DeepSpeed ZeRO-2 and ZeRO-3 through the shipped accelerate configs, 2 processes on CPU (DeepSpeed's CPU
accelerator, gloo): a run stopped after its step-2 checkpoint and resumed equals one process with the global
batch (per-step losses and metrics, checkpoint weights, final weights, all within 1e-5), so checkpoints and
final/ hold the full gathered weights and resume scatters them back. Skipped without DeepSpeed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from alignkit.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]
COMMON = ["max_steps=4", "eval_every=2", "save_every=2", "keep_checkpoints=2", "optim.learning_rate=3e-4",
          "data.synthetic.n_train=32"]
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install deepspeed; docs/scaling.md)")


def launch(out: Path, zero_stage: int | None, *overrides: str) -> None:
    """One plain process (``zero_stage`` None), or 2 processes under the shipped DeepSpeed config, in fp32."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNKIT_CACHE": f"{out}-cache",  # reference log-probs: own
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "tests.train.run_tiny"]
    if zero_stage is not None:
        command[1:2] = ["-m", "accelerate.commands.launch", "--config_file",
                        str(REPO / "examples" / "accelerate" / f"deepspeed_zero{zero_stage}.yaml"),
                        "--num_processes", "2", "--mixed_precision", "no",
                        "--main_process_port", str(29700 + os.getpid() % 1000), "-m"]
    done = subprocess.run([*command, str(out), *COMMON, *overrides], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:4]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def final_weights(run: Path) -> dict:
    name = "adapter_model.safetensors" if (run / "final" / "adapter_model.safetensors").exists() \
        else "model.safetensors"
    return load_file(run / "final" / name)


CASES = {  # zero stage, overrides
    "zero2-copy-accumulation": (2, ["lora.enabled=false", "reference=copy", "gradient_accumulation_steps=2"]),
    "zero3-precomputed-accumulation": (3, ["lora.enabled=false", "reference=precomputed",
                                           "gradient_accumulation_steps=2"]),
    "zero3-lora-adapter": (3, ["lora.enabled=true", "reference=adapter"]),
}


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_deepspeed_run_equals_one_process(tmp_path, case):
    stage, overrides = CASES[case]
    one, two = tmp_path / "one", tmp_path / "two"
    launch(one, None, "batch_size=4", *overrides)
    launch(two, stage, "batch_size=2", *overrides, "max_steps=2")  # stops after its step-2 checkpoint ...
    launch(two, stage, "batch_size=2", *overrides, "resume=true")  # ... and resumes from it to step 4

    a, b = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [(m["step"], m["split"]) for m in a] == [(m["step"], m["split"]) for m in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/chosen"):
            assert x[key] == pytest.approx(y[key], abs=1e-5, rel=1e-6), (x["step"], x["split"], key)
    checkpoints = [f"checkpoints/step-00000{s}/weights.safetensors" for s in (2, 4)]
    early, late = (load_file(one / c) for c in checkpoints)
    assert max_difference(early, late) > 1e-4  # two AdamW steps at lr 3e-4 moved the weights: the checks bite
    for checkpoint in checkpoints:  # full tensors under plain names, as the one-process run writes them
        assert max_difference(load_file(one / checkpoint), load_file(two / checkpoint)) <= 1e-5, checkpoint
    assert max_difference(final_weights(one), final_weights(two)) <= 1e-5


def deepspeed_accelerator(zero_stage: int, init_flag: bool = False, **ds_config):
    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(zero_stage=zero_stage, zero3_init_flag=init_flag, deepspeed_config=dict(ds_config))
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=2,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


def test_deepspeed_config_is_filled_from_the_alignkit_config_and_conflicts_are_refused(tmp_path):
    from alignkit.configs import ConfigError
    from alignkit.train.config import load_config
    from alignkit.train.loop import configure_deepspeed

    config = load_config(None, [f"output_dir={tmp_path}", "batch_size=3", "gradient_accumulation_steps=2",
                                "optim.max_grad_norm=0.5"])
    filled = deepspeed_accelerator(2, gradient_clipping="auto")
    configure_deepspeed(filled, config)
    assert filled.state.deepspeed_plugin.deepspeed_config == {
        "gradient_accumulation_steps": 2, "gradient_clipping": 0.5, "train_micro_batch_size_per_gpu": 3,
        "train_batch_size": 3 * 2 * 2}
    with pytest.raises(ConfigError, match="gradient_clipping: 1.0 differs"):
        configure_deepspeed(deepspeed_accelerator(2, gradient_clipping=1.0), config)
    with pytest.raises(ConfigError, match="zero3_init_flag: false"):
        configure_deepspeed(deepspeed_accelerator(3, init_flag=True), config)
    configure_deepspeed(deepspeed_accelerator(3), config)  # ZeRO-3 with accumulation: begin_micro_batch
