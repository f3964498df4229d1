"""Checkpoints that survive being killed mid-write, and resume that reproduces an uninterrupted run.

A checkpoint is a directory ``checkpoints/step-NNNNNN`` holding the trainable weights (safetensors), the
optimizer and scheduler states, RNG states and the trainer state (step, data position, objective state).
It is written to a hidden temporary directory and renamed into place, so a visible ``step-*`` directory
is always complete.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from alignkit.io import atomic_directory

REQUIRED_FILES = ("weights.safetensors", "optimizer.pt", "trainer_state.json")


class CheckpointError(RuntimeError):
    pass


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches consumed: the data position
    objective_state: dict[str, Any] = field(default_factory=dict)  # e.g. BCO's running reward mean
    tokens_seen: int = 0
    num_processes: int = 1  # the data order is sharded by process count; resume needs the same count


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    """This process's torch (and CUDA) generator states, JSON-ready."""
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in state["cuda"]])


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer, scheduler, state: TrainerState,
                    keep: int = 2, rng_per_process: list[dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint of the run at ``state.step``. ``rng_per_process`` holds every process's RNG state
    (rank order, gathered by the caller) so each resumes its own stream (dropout differs per process); by
    default only this process's state is kept."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{state.step:06d}"

    def fill(tmp: Path) -> None:
        save_file(trainable_state(model), str(tmp / "weights.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        payload = {"trainer": asdict(state), "rng": rng_state(), "rng_per_process": rng_per_process}
        (tmp / "trainer_state.json").write_text(json.dumps(payload))

    atomic_directory(target, fill)  # written whole, fsynced, renamed: a visible step-* is always complete
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    candidates = sorted((run_dir / "checkpoints").glob("step-*"))
    return candidates[-1] if candidates else None


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, process_index: int = 0) -> TrainerState:
    """Restore everything saved by :func:`save_checkpoint`, with the RNG state of process ``process_index``;
    errors name the broken file."""
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        weights = load_file(str(path / "weights.safetensors"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path / 'weights.safetensors'} is corrupt: {err}") from err
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise CheckpointError(f"checkpoint {path} does not match the model being trained "
                              f"(missing {missing}, unexpected {extra}); same config as the original run?")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
        payload = json.loads((path / "trainer_state.json").read_text())
    except Exception as err:  # noqa: BLE001 - any failure here means the files are unusable
        raise CheckpointError(f"checkpoint {path} could not be restored: {err}") from err
    per_process = payload.get("rng_per_process") or [payload["rng"]]
    if process_index >= len(per_process):
        raise CheckpointError(f"checkpoint {path} holds the RNG states of {len(per_process)} process(es), "
                              f"not of process {process_index}: resume with the process count it was saved with")
    _set_rng_state(per_process[process_index])
    return TrainerState(**payload["trainer"])
