"""The training recipe: load, wrap, loop, log, checkpoint. Reads top to bottom.

It composes the pieces and owns none of the math: the log-prob engine (``logprobs``) turns batches into
per-sequence log-probs, the objectives (``alignkit.objectives``) turn log-probs into losses, and the
reference policies (``reference``) supply the reference log-probs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from transformers import get_scheduler

from alignkit.engine.exactness import layout_support
from alignkit.models import load_model
from alignkit.progress import TrainProgress
from alignkit.train.batching import micro_batches
from alignkit.train.checkpoint import (
    CheckpointError,
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.train.config import TrainConfig, dump_config
from alignkit.train.methods import BatchContext, Method, build_method
from alignkit.train.reference import AdapterDisabledReference, FrozenCopyReference, PrecomputedReference


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class RunResult:
    output_dir: Path
    final_dir: Path
    model: nn.Module  # the trained policy (with its adapter, if LoRA)
    state: TrainerState
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]


# ---------------------------------------------------------------- set-up pieces


def resolve_reference_mode(config: TrainConfig, method: Method) -> str:
    mode = config.reference
    if not method.needs_reference:
        return "none"
    if mode == "none":
        raise ValueError(f"reference: none, but objectives {[o.name for o in config.objectives]} need a "
                         f"reference model")
    if mode == "precomputed" and not method.precomputable_reference:
        raise ValueError("this method's reference log-probs depend on the policy's samples; use copy or adapter")
    if mode == "auto":
        return "adapter" if config.lora.enabled else "copy"
    return mode


def enable_activation_checkpointing(model: nn.Module) -> None:
    """transformers' per-layer checkpointing, non-reentrant (works with frozen inputs, e.g. under LoRA)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5 name
    if callable(enable):
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ValueError(f"activation_checkpointing: {type(model).__name__} does not support it")
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def attach_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in present]
    if not targets:
        raise ValueError(f"lora.target_modules {lora.target_modules} match no module of this model")
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)  # (its deprecation warning is filtered in alignkit.models.loading)


# ---------------------------------------------------------------- the recipe


def train(config: TrainConfig, log: Callable[[str], None] = print, stop_after_steps: int | None = None,
          model: nn.Module | None = None, tokenizer=None) -> RunResult:
    """Run training as configured. ``stop_after_steps`` ends early as if killed right after that step's
    checkpoint (used to test resume); ``model``/``tokenizer`` bypass loading (tests use tiny models)."""
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              cpu=config.model.device == "cpu")
    autocast_dtype = torch.bfloat16 if config.bf16 else None

    method = build_method(config)
    reference_mode = resolve_reference_mode(config, method)

    if model is None:
        model, tokenizer = load_model(config.model.name, dtype=config.model.dtype, device=config.model.device,
                                      trust_remote_code=config.model.trust_remote_code, log=log)
    model.to(accelerator.device)
    train_items, eval_items = method.load(tokenizer, out_dir, log)
    (out_dir / "config.yaml").write_text(dump_config(config))

    precomputed = eval_precomputed = None
    if reference_mode == "precomputed":  # computed from the initial weights, before any adapter exists
        common = dict(pad_id=tokenizer.pad_token_id, batch_size=config.batch_size,
                      chunk_size=config.logprob_chunk_size, autocast_dtype=autocast_dtype,
                      score_prompt=method.score_prompt, log=log,
                      shared_prefix=config.layout == "shared_prefix" and layout_support(model, tokenizer.pad_token_id)
                      is None)
        precomputed = PrecomputedReference.build(model, tokenizer, method.reference_rows(train_items), **common)
        eval_precomputed = PrecomputedReference.build(model, tokenizer, method.reference_rows(eval_items), **common)
    frozen = FrozenCopyReference(model, config.logprob_chunk_size, autocast_dtype) \
        if reference_mode == "copy" else None
    if config.lora.enabled:
        model = attach_lora(model, config)
    reference = frozen or (AdapterDisabledReference(model, config.logprob_chunk_size, autocast_dtype)
                           if reference_mode == "adapter" else None)

    model = method.wrap_model(model)  # before the optimizer and any checkpoint restore see its parameters
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = config.optim
    optimizer = torch.optim.AdamW(trainable, lr=optim.learning_rate, weight_decay=optim.weight_decay,
                                  betas=optim.adam_betas)
    scheduler = get_scheduler(optim.scheduler, optimizer, num_warmup_steps=optim.warmup_steps,
                              num_training_steps=config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()

    state = TrainerState()
    if config.resume:
        checkpoint = latest_checkpoint(out_dir)
        if checkpoint is None:
            raise CheckpointError(f"resume requested but {out_dir / 'checkpoints'} holds no checkpoint")
        state = load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler)
        log(f"resumed from {checkpoint} at step {state.step}")
    else:
        _start_fresh(out_dir, log)
    metrics_path = out_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, state.step)

    ctx = BatchContext(model, reference, tokenizer.pad_token_id, config.logprob_chunk_size, autocast_dtype,
                       accelerator.device, tokenizer)
    batches = micro_batches(config, train_items, start=state.micro_step)
    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    last_good = latest_checkpoint(out_dir)

    if state.step == 0 and config.eval_every:  # the baseline every later eval is compared with
        eval_metrics = method.evaluate(ctx, eval_items, config.batch_size, eval_precomputed,
                                       state.objective_state)
        _append_metrics(metrics_path, 0, "eval", eval_metrics)
        log(f"eval before training: {_short(eval_metrics)}")

    with TrainProgress(config.max_steps, state.step, enabled=config.progress) as progress:
        while state.step < config.max_steps:
            step_start, step_tokens, accumulated = time.perf_counter(), 0, []
            for _ in range(config.gradient_accumulation_steps):
                indices = next(batches)
                with accelerator.accumulate(model):
                    out = method.step(ctx, train_items, indices, precomputed, state.objective_state,
                                      training=True)
                    loss, metrics = out.loss, out.metrics
                    if not math.isfinite(metrics["loss"]):
                        raise TrainingDiverged(
                            f"non-finite loss ({metrics['loss']}) at step {state.step + 1}; last good "
                            f"checkpoint: {last_good or 'none yet'}. Lower the learning rate or check the data.")
                    accelerator.backward(loss)
                    grad_norm = None
                    if accelerator.sync_gradients and optim.max_grad_norm:
                        grad_norm = float(accelerator.clip_grad_norm_(trainable, optim.max_grad_norm))
                        if not math.isfinite(grad_norm):
                            raise TrainingDiverged(
                                f"non-finite gradient norm at step {state.step + 1}; last good checkpoint: "
                                f"{last_good or 'none yet'}")
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state.micro_step += 1
                step_tokens += out.num_tokens
                accumulated.append(metrics)
            state.step += 1
            state.tokens_seen += step_tokens
            elapsed = time.perf_counter() - step_start
            last_metrics = {k: sum(m[k] for m in accumulated) / len(accumulated) for k in accumulated[0]}
            last_metrics.update(learning_rate=scheduler.get_last_lr()[0], tokens_per_second=step_tokens / elapsed,
                                step_seconds=elapsed)
            if grad_norm is not None:
                last_metrics["grad_norm"] = grad_norm
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                _append_metrics(metrics_path, state.step, "train", last_metrics)
            progress.update(state.step, last_metrics)

            if config.eval_every and state.step % config.eval_every == 0 and state.step < config.max_steps:
                eval_metrics = method.evaluate(ctx, eval_items, config.batch_size, eval_precomputed,
                                               state.objective_state)
                _append_metrics(metrics_path, state.step, "eval", eval_metrics)
                progress.note(f"eval step {state.step}: " + _short(eval_metrics))
            if config.save_every and state.step % config.save_every == 0:
                last_good = save_checkpoint(out_dir, accelerator.unwrap_model(model), optimizer, scheduler,
                                            state, keep=config.keep_checkpoints)
            if stop_after_steps is not None and state.step >= stop_after_steps:
                return RunResult(out_dir, out_dir, accelerator.unwrap_model(model), state, last_metrics, eval_metrics)

    eval_metrics = method.evaluate(ctx, eval_items, config.batch_size, eval_precomputed, state.objective_state)
    _append_metrics(metrics_path, state.step, "eval", eval_metrics)
    log(f"final eval: {_short(eval_metrics)}")
    final_model = method.export(accelerator.unwrap_model(model), out_dir / "final")
    final_dir = save_final(final_model, tokenizer, config, out_dir / "final")
    log(f"saved final model to {final_dir}")
    return RunResult(out_dir, final_dir, accelerator.unwrap_model(model), state, last_metrics, eval_metrics)


def save_final(model: nn.Module, tokenizer, config: TrainConfig, final_dir: Path) -> Path:
    """A directory ``AutoModelForCausalLM.from_pretrained`` loads: full weights, or adapter + base path."""
    final_dir.mkdir(parents=True, exist_ok=True)
    if config.lora.enabled and config.lora.merge_on_save:
        model = model.merge_and_unload()
    model.save_pretrained(final_dir, safe_serialization=True)
    tokenizer.save_pretrained(final_dir)
    (final_dir / "alignkit_config.yaml").write_text(dump_config(config))
    return final_dir


def _short(metrics: dict[str, float]) -> str:
    keys = ["loss", "rewards/accuracies", "rewards/margins", "ranking/accuracy"]
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


_TENSORBOARD: dict[Path, object] = {}


def _tensorboard(run_dir: Path):
    """A SummaryWriter under run_dir/tensorboard when tensorboard is installed, else None."""
    if run_dir not in _TENSORBOARD:
        try:
            from torch.utils.tensorboard import SummaryWriter

            _TENSORBOARD[run_dir] = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            _TENSORBOARD[run_dir] = None
    return _TENSORBOARD[run_dir]


def _append_metrics(path: Path, step: int, split: str, metrics: dict[str, float]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    writer = _tensorboard(path.parent)
    if writer is not None:
        for key, value in metrics.items():
            writer.add_scalar(f"{split}/{key}", value, step)
        writer.flush()


def _start_fresh(out_dir: Path, log: Callable[[str], None]) -> None:
    """A run without ``resume`` owns its directory: an earlier run's metrics and checkpoints would otherwise
    mix into this run's curves and be taken for its last good checkpoint."""
    old_metrics = out_dir / "metrics.jsonl"
    old_checkpoints = sorted((out_dir / "checkpoints").glob("step-*"))
    if old_metrics.exists() or old_checkpoints:
        log(f"fresh run (no --resume): replacing the earlier run's metrics.jsonl and {len(old_checkpoints)} "
            f"checkpoint(s) in {out_dir}")
    old_metrics.unlink(missing_ok=True)
    for checkpoint in old_checkpoints:
        shutil.rmtree(checkpoint)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the file reads as one uninterrupted run."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


__all__ = ["RunResult", "TrainingDiverged", "save_final", "train"]
