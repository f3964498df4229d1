"""The training recipe: load, wrap, loop, log, checkpoint. Reads top to bottom.

It composes the pieces and owns none of the math: the log-prob engine (``logprobs``) turns batches into
per-sequence log-probs, the objectives (``alignkit.objectives``) turn log-probs into losses, and the
reference policies (``reference``) supply the reference log-probs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn
from transformers import get_scheduler

from alignkit.models import load_model
from alignkit.objectives import OBJECTIVES, PairLogps, UnpairedLogps, get_objective
from alignkit.objectives.base import ObjectiveSpec
from alignkit.train.checkpoint import (
    CheckpointError,
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.train.config import TrainConfig, dump_config
from alignkit.train.data import RunData, batch_order, load_run_data
from alignkit.train.logprobs import collate, sequence_logps
from alignkit.train.progress import TrainProgress
from alignkit.train.reference import AdapterDisabledReference, FrozenCopyReference, PrecomputedReference

JOINT_OBJECTIVES = {"dove"}  # score prompt + response tokens (joint log-prob)


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


def resolve_objectives(config: TrainConfig) -> list[tuple[ObjectiveSpec, float, dict]]:
    resolved = [(get_objective(o.name), o.weight, o.params) for o in config.objectives]
    kinds = {spec.inputs for spec, _, _ in resolved}
    if len(kinds) > 1:
        raise ValueError(f"objectives {[o.name for o in config.objectives]} mix paired and unpaired inputs")
    return resolved


def resolve_reference_mode(config: TrainConfig, objectives) -> str:
    needs = any(spec.needs_reference for spec, _, _ in objectives)
    mode = config.reference
    if not needs:
        return "none"
    if mode == "none":
        names = [spec.name for spec, _, _ in objectives if spec.needs_reference]
        raise ValueError(f"reference: none, but objectives {names} need a reference model")
    if mode == "auto":
        return "adapter" if config.lora.enabled else "copy"
    return mode


def attach_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in present]
    if not targets:
        raise ValueError(f"lora.target_modules {lora.target_modules} match no module of this model")
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


# ---------------------------------------------------------------- one batch


@dataclass
class BatchContext:
    model: nn.Module
    reference: object | None
    pad_id: int
    chunk_size: int
    autocast_dtype: torch.dtype | None
    score_prompt: bool
    device: torch.device


def pair_logps(ctx: BatchContext, items, indices: list[int], precomputed: PrecomputedReference | None,
               all_items=None) -> tuple[PairLogps, int]:
    """Chosen and rejected rows go through one forward pass."""
    rows = [(p.prompt, p.chosen) for p in items] + [(p.prompt, p.rejected) for p in items]
    batch = collate(rows, ctx.pad_id, ctx.score_prompt).to(ctx.device)
    out = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype)
    n = len(items)
    ref_c = ref_r = None
    if precomputed is not None:
        idx = torch.tensor(indices)
        ref_c = precomputed.lookup(2 * idx).to(ctx.device)
        ref_r = precomputed.lookup(2 * idx + 1).to(ctx.device)
    elif ctx.reference is not None:
        ref = ctx.reference.logps(batch)
        ref_c, ref_r = ref.logps[:n], ref.logps[n:]
    logps = PairLogps(out.logps[:n], out.logps[n:], out.tokens[:n], out.tokens[n:], ref_c, ref_r,
                      out.logits_mean[:n], out.logits_mean[n:])
    return logps, batch.num_tokens


def unpaired_logps(ctx: BatchContext, items, indices: list[int], precomputed: PrecomputedReference | None,
                   all_items) -> tuple[UnpairedLogps, int]:
    """KTO's KL term uses mismatched prompt/completion rows: example i's prompt with the completion of
    example i+1 of the dataset (not of the batch), so reference log-probs for them can be precomputed."""
    n = len(all_items)
    rows = [(e.prompt, e.response) for e in items]
    kl_rows = [(all_items[i].prompt, all_items[(i + 1) % n].response) for i in indices]
    batch = collate(rows, ctx.pad_id, ctx.score_prompt).to(ctx.device)
    out = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype)
    kl_batch = collate(kl_rows, ctx.pad_id, ctx.score_prompt).to(ctx.device)
    with torch.no_grad():
        kl_policy = sequence_logps(ctx.model, kl_batch, ctx.chunk_size, ctx.autocast_dtype).logps
    ref = kl_ref = None
    if precomputed is not None:
        ref = precomputed.lookup(2 * torch.tensor(indices)).to(ctx.device)
        kl_ref = precomputed.lookup(2 * torch.tensor(indices) + 1).to(ctx.device)
    elif ctx.reference is not None:
        ref = ctx.reference.logps(batch).logps
        kl_ref = ctx.reference.logps(kl_batch).logps
    label = torch.tensor([bool(e.label) for e in items], device=ctx.device)
    logps = UnpairedLogps(out.logps, out.tokens, label, ref, kl_policy, kl_ref, out.logits_mean)
    return logps, batch.num_tokens + kl_batch.num_tokens


def combine_objectives(objectives, logps, objective_state: dict, training: bool
                       ) -> tuple[Tensor, dict[str, float]]:
    total, metrics = None, {}
    for spec, weight, params in objectives:
        kwargs = dict(params)
        if spec.stateful:
            kwargs["state"] = objective_state.setdefault(spec.name, {})
            kwargs["training"] = training
        out = spec.fn(logps, **kwargs)
        loss = out.loss.mean()
        total = weight * loss if total is None else total + weight * loss
        if len(objectives) > 1:
            metrics[f"loss/{spec.name}"] = loss.item()
        for key, value in out.metrics.items():
            metrics.setdefault(key, float(value))
    if isinstance(logps, PairLogps):
        metrics["ranking/accuracy"] = (logps.chosen > logps.rejected).float().mean().item()
        metrics["ranking/accuracy_normalized"] = (
            (logps.chosen / logps.chosen_tokens) > (logps.rejected / logps.rejected_tokens)
        ).float().mean().item()
    metrics["loss"] = total.item()
    return total, metrics


def _example_rows(items, paired: bool) -> list[tuple[list[int], list[int]]]:
    """Row layout for precomputing reference log-probs: two rows per example, in index order."""
    rows = []
    n = len(items)
    for i, item in enumerate(items):
        if paired:
            rows += [(item.prompt, item.chosen), (item.prompt, item.rejected)]
        else:  # the example itself, then its KL partner (see unpaired_logps)
            rows += [(item.prompt, item.response), (item.prompt, items[(i + 1) % n].response)]
    return rows


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(ctx: BatchContext, objectives, items, batch_size: int, objective_state: dict,
             eval_reference: PrecomputedReference | None) -> dict[str, float]:
    was_training = ctx.model.training
    ctx.model.eval()
    paired = objectives[0][0].inputs == "pair"
    sums: dict[str, float] = {}
    count = 0
    for start in range(0, len(items), batch_size):
        part = items[start:start + batch_size]
        if paired or len(part) > 1:
            indices = list(range(start, start + len(part)))
            build = pair_logps if paired else unpaired_logps
            logps, _ = build(ctx, part, indices, eval_reference, items)
            _, metrics = combine_objectives(objectives, logps, objective_state, training=False)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * len(part)
            count += len(part)
    ctx.model.train(was_training)
    return {key: value / max(count, 1) for key, value in sums.items()}


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

    objectives = resolve_objectives(config)
    paired = objectives[0][0].inputs == "pair"
    reference_mode = resolve_reference_mode(config, objectives)
    score_prompt = any(spec.name in JOINT_OBJECTIVES for spec, _, _ in objectives)

    if model is None:
        model, tokenizer = load_model(config.model.name, dtype=config.model.dtype, device=config.model.device,
                                      trust_remote_code=config.model.trust_remote_code, log=log)
    model.to(accelerator.device)
    data: RunData = load_run_data(config, tokenizer, out_dir, unpaired=not paired, log=log)
    (out_dir / "config.yaml").write_text(dump_config(config))

    precomputed = eval_precomputed = None
    if reference_mode == "precomputed":  # computed from the initial weights, before any adapter exists
        common = dict(pad_id=tokenizer.pad_token_id, batch_size=config.batch_size,
                      chunk_size=config.logprob_chunk_size, autocast_dtype=autocast_dtype,
                      score_prompt=score_prompt, log=log)
        precomputed = PrecomputedReference.build(model, tokenizer, _example_rows(data.train_encoded, paired),
                                                 **common)
        eval_precomputed = PrecomputedReference.build(model, tokenizer,
                                                      _example_rows(data.eval_encoded, paired), **common)
    frozen = FrozenCopyReference(model, config.logprob_chunk_size, autocast_dtype) \
        if reference_mode == "copy" else None
    if config.lora.enabled:
        model = attach_lora(model, config)
    reference = frozen or (AdapterDisabledReference(model, config.logprob_chunk_size, autocast_dtype)
                           if reference_mode == "adapter" else None)

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
    metrics_path = out_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, state.step)

    ctx = BatchContext(model, reference, tokenizer.pad_token_id, config.logprob_chunk_size, autocast_dtype,
                       score_prompt, accelerator.device)
    build = pair_logps if paired else unpaired_logps
    batches = batch_order(len(data.train_encoded), config.batch_size, config.seed, start=state.micro_step)
    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    last_good = latest_checkpoint(out_dir)

    if state.step == 0 and config.eval_every:  # the baseline every later eval is compared with
        eval_metrics = evaluate(ctx, objectives, data.eval_encoded, config.batch_size, state.objective_state,
                                eval_precomputed)
        _append_metrics(metrics_path, 0, "eval", eval_metrics)
        log(f"eval before training: {_short(eval_metrics)}")

    with TrainProgress(config.max_steps, state.step, enabled=config.progress) as progress:
        while state.step < config.max_steps:
            step_start, step_tokens, accumulated = time.perf_counter(), 0, []
            for _ in range(config.gradient_accumulation_steps):
                indices = next(batches)
                items = [data.train_encoded[i] for i in indices]
                with accelerator.accumulate(model):
                    logps, n_tokens = build(ctx, items, indices, precomputed, data.train_encoded)
                    loss, metrics = combine_objectives(objectives, logps, state.objective_state,
                                                       training=True)
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
                step_tokens += n_tokens
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
                eval_metrics = evaluate(ctx, objectives, data.eval_encoded, config.batch_size,
                                        state.objective_state, eval_precomputed)
                _append_metrics(metrics_path, state.step, "eval", eval_metrics)
                progress.note(f"eval step {state.step}: " + _short(eval_metrics))
            if config.save_every and state.step % config.save_every == 0:
                last_good = save_checkpoint(out_dir, accelerator.unwrap_model(model), optimizer, scheduler,
                                            state, keep=config.keep_checkpoints)
            if stop_after_steps is not None and state.step >= stop_after_steps:
                return RunResult(out_dir, out_dir, accelerator.unwrap_model(model), state, last_metrics, eval_metrics)

    eval_metrics = evaluate(ctx, objectives, data.eval_encoded, config.batch_size, state.objective_state,
                            eval_precomputed)
    _append_metrics(metrics_path, state.step, "eval", eval_metrics)
    log(f"final eval: {_short(eval_metrics)}")
    final_dir = save_final(accelerator.unwrap_model(model), tokenizer, config, out_dir / "final")
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


def _append_metrics(path: Path, step: int, split: str, metrics: dict[str, float]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the file reads as one uninterrupted run."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


__all__ = ["OBJECTIVES", "RunResult", "TrainingDiverged", "train", "evaluate", "save_final"]
