"""Checkpoints that survive being killed mid-write, and resume that reproduces an uninterrupted run.

A checkpoint is a directory ``checkpoints/step-NNNNNN`` holding the trainable weights (safetensors), the
optimizer and scheduler states, RNG states and the trainer state (step, data position, objective state).
It is written to a hidden temporary directory and renamed into place, so a visible ``step-*`` directory
is always complete.

Weights and optimizer state go through torch's distributed state-dict API
(``torch.distributed.checkpoint.state_dict``), which gathers FSDP-sharded parameters and optimizer state into
full tensors on the main process and scatters them back on resume; for one process or DDP it is the plain
state dict. The files are therefore the same whatever the sharding, keyed by parameter name.

Under DeepSpeed ZeRO (stages 1-3) the weights are gathered from ZeRO's fp32 master partitions
(``deepspeed.utils.safe_get_full_fp32_param``) into the same full, name-keyed ``weights.safetensors``, and
restored into both the master partitions and the module's parameters. ZeRO's optimizer state lives in flat
per-process partitions that have no per-parameter form short of re-implementing ZeRO's layout, so
``optimizer.pt`` holds every process's partition in rank order and resume (which already needs the same
process count) gives each process its own back.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

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


# FSDP1 and activation checkpointing insert these into parameter names; the state-dict API removes them
WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors, on the main process only


def deepspeed_engine(model: nn.Module):
    """The DeepSpeed engine ``model`` is, or None (without importing DeepSpeed when nothing loaded it)."""
    engine_class = getattr(sys.modules.get("deepspeed"), "DeepSpeedEngine", None)
    return model if engine_class is not None and isinstance(model, engine_class) else None


def trainable_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters as the state-dict API writes them (wrapper prefixes removed)."""
    from torch.nn.parallel import DistributedDataParallel

    inner = model.module if isinstance(model, DistributedDataParallel) or deepspeed_engine(model) else model
    names = set()
    for name, param in inner.named_parameters():
        if param.requires_grad:
            for wrapper in WRAPPER_NAMES:
                name = name.replace(wrapper, "")
            names.add(name)
    return names


def _unwrapped_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's


def gather_training_state(model: nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(trainable weights, optimizer state), full tensors on CPU. A collective under FSDP: every process
    calls it, and only the main process receives the tensors (the others get empty dicts)."""
    if deepspeed_engine(model) is not None:
        return _gather_deepspeed_state(model)
    names = trainable_names(model)
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                    ignore_frozen_params=True))
    weights = {name: tensor.contiguous() for name, tensor in weights.items() if name in names}
    return weights, get_optimizer_state_dict(model, _unwrapped_optimizer(optimizer), options=GATHER)


def gather_full_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` as full CPU tensors on the main process (a collective)."""
    engine = deepspeed_engine(model)
    if engine is not None and engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict() or {}  # ZeRO-3: layer by layer; None off rank 0
    return get_model_state_dict(model, options=GATHER)


def parameters_sharded(model: nn.Module) -> bool:
    """True when each process holds only a shard of the parameters: FSDP (FSDP2's DTensors or FSDP1) or
    DeepSpeed ZeRO-3 (whose partitioned parameters carry a ``ds_id``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters()) or any(
        isinstance(m, FullyShardedDataParallel) for m in model.modules())


def _gather_deepspeed_state(engine) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(full fp32 master weights by name, {"zero_partitions": every process's optimizer partition}); a
    collective. The master weights, not the module's (bf16 under mixed precision), so resume is exact."""
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            full = safe_get_full_fp32_param(param)  # all-reduce / all-gather over the data-parallel group
            weights[name] = (param.detach() if full is None else full).cpu().contiguous()
    partitions: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(_zero_partition(engine.optimizer), partitions, dst=0)
    if dist.get_rank() != 0:
        return {}, {}
    return weights, {"zero_partitions": partitions}


# ZeRO's own copies of the fp32 weights (stages 1-2, stage 3): weights.safetensors holds them whole
ZERO_WEIGHT_KEYS = ("single_partition_of_fp32_groups", "fp32_flat_groups")


def _zero_partition(zero_optimizer) -> dict[str, Any]:
    """This process's share of ZeRO's optimizer state (the torch optimizer's state over its flat partition,
    clip and overflow flags), as plain values that ``torch.load(weights_only=True)`` reads back; the loss-scaler
    object and the like are taken from the live optimizer on restore."""
    return {key: value for key, value in zero_optimizer.state_dict().items()
            if key not in ZERO_WEIGHT_KEYS and _plain(value)}


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, torch.Tensor) or type(value) in (int, float, str, bool)


def _restore_deepspeed_state(engine, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
                             process_index: int) -> None:
    """This process's optimizer partition back into ZeRO's optimizer, then the full weights into ZeRO's fp32
    master partitions and the module's parameters (gathered and re-partitioned under ZeRO-3)."""
    from deepspeed.runtime.zero import GatheredParameters
    from deepspeed.utils import safe_set_full_fp32_param

    partitions = optimizer_state.get("zero_partitions")
    if partitions is None or process_index >= len(partitions):
        saved = "no DeepSpeed partitions" if partitions is None else f"{len(partitions)} partition(s)"
        raise ValueError(f"the optimizer state holds {saved}, not one for process {process_index}: resume "
                         "DeepSpeed runs under DeepSpeed with the process count they were saved with")
    zero = engine.optimizer
    merged = {**zero.state_dict(), **partitions[process_index]}  # the live weights stay: set from the file below
    zero.load_state_dict([merged if rank == process_index else None for rank in range(len(partitions))],
                         load_optimizer_states=True, load_from_fp32_weights=True)
    with torch.no_grad():
        for name, param in engine.module.named_parameters():
            if not param.requires_grad:
                continue
            value = weights[name]
            with GatheredParameters([param], modifier_rank=0):  # a no-op unless ZeRO-3 partitioned it
                param.data.copy_(value.to(param.dtype))
            safe_set_full_fp32_param(param, value.to(device=param.device, dtype=torch.float32))


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


def save_checkpoint(run_dir: Path, training_state: tuple[dict[str, torch.Tensor], dict[str, Any]], scheduler,
                    state: TrainerState, keep: int = 2, rng_per_process: list[dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint of the run at ``state.step`` (main process). ``training_state`` is what
    :func:`gather_training_state` returned. ``rng_per_process`` holds every process's RNG state (rank order,
    gathered by the caller) so each resumes its own stream (dropout differs per process); by default only
    this process's state is kept."""
    weights, optimizer_state = training_state
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{state.step:06d}"

    def fill(tmp: Path) -> None:
        save_file(weights, str(tmp / "weights.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
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
    errors name the broken file. Every process calls it (under FSDP each takes its shard of the tensors)."""
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        weights = load_file(str(path / "weights.safetensors"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path / 'weights.safetensors'} is corrupt: {err}") from err
    expected = trainable_names(model)
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise CheckpointError(f"checkpoint {path} does not match the model being trained "
                              f"(missing {missing}, unexpected {extra}); same config as the original run?")
    engine = deepspeed_engine(model)
    if engine is None:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    try:
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
        if engine is not None:
            _restore_deepspeed_state(engine, weights, optimizer_state, process_index)
        elif "zero_partitions" in optimizer_state:
            raise ValueError("it was saved under DeepSpeed ZeRO (per-process optimizer partitions); resume it "
                             "under DeepSpeed with the same ZeRO stage and process count")
        elif all(isinstance(key, int) for key in optimizer_state.get("state", {})) and optimizer_state.get("state"):
            _unwrapped_optimizer(optimizer).load_state_dict(optimizer_state)  # written before names were used
        else:
            set_optimizer_state_dict(model, _unwrapped_optimizer(optimizer), optimizer_state,
                                     options=StateDictOptions(full_state_dict=True))
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
