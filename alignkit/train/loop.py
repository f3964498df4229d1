"""The training recipe: load, wrap, loop, log, checkpoint. Reads top to bottom.

It composes the pieces and owns none of the math: the log-prob engine (``logprobs``) turns batches into
per-sequence log-probs, the objectives (``alignkit.objectives``) turn log-probs into losses, and the
reference policies (``reference``) supply the reference log-probs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, gather_object, set_seed
from torch import nn
from transformers import get_scheduler

from alignkit.configs import ConfigError
from alignkit.engine.exactness import layout_support
from alignkit.io import append_jsonl, atomic_directory, atomic_write_text
from alignkit.models import load_model
from alignkit.progress import TrainProgress, counted
from alignkit.train.batching import micro_batches
from alignkit.train.checkpoint import (
    CheckpointError,
    TrainerState,
    deepspeed_engine,
    gather_full_model,
    gather_training_state,
    latest_checkpoint,
    load_checkpoint,
    parameters_sharded,
    rng_state,
    save_checkpoint,
)
from alignkit.train.config import TrainConfig, dump_config
from alignkit.train.distributed import main_first, reduce_metrics, sharded_evaluate
from alignkit.train.methods import BatchContext, Method, build_method
from alignkit.train.recompute import enable_activation_checkpointing
from alignkit.train.reference import AdapterDisabledReference, FrozenCopyReference, PrecomputedReference
from alignkit.train.rundir import ReplacedRun, claim, truncate_metrics
from alignkit.train.tied_embedding import accumulate_tied_embedding_sparsely


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
    config.check_objectives()
    out_dir = Path(config.output_dir)
    method = build_method(config)
    reference_mode = resolve_reference_mode(config, method)
    if config.resume and latest_checkpoint(out_dir) is None:
        raise CheckpointError(f"resume requested but {out_dir / 'checkpoints'} holds no checkpoint (a run stopped "
                              "before its first save cannot be resumed); start it again without --resume "
                              "(with --overwrite if the directory holds its files)")
    cpu = config.model.device == "cpu" or not torch.cuda.is_available()
    handlers = []
    if not torch.cuda.is_available() and deepspeed_launched():
        # accelerate drops DeepSpeed when cpu=True; DeepSpeed's CPU accelerator runs its collectives over gloo
        cpu, handlers = False, [InitProcessGroupKwargs(backend="gloo")]
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps, cpu=cpu,
                              log_with=config.report_to or None, kwargs_handlers=handlers,
                              project_dir=str(out_dir / "trackers"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:  # N independent copies would all write the same directory
        raise RuntimeError(f"launched as {launched} processes but accelerate set up {accelerator.num_processes}; "
                           "check the launcher and `accelerate env`")
    configure_deepspeed(accelerator, config)
    if not accelerator.is_main_process:
        log = _silent  # one process speaks for the run
    # Everything above only reads; from here on the directory is ours (an earlier run is refused or set aside).
    replaced = main_first(accelerator, lambda: claim(out_dir, config.resume, config.overwrite, log))
    try:
        return _run(config, accelerator, method, reference_mode, out_dir, replaced, log, stop_after_steps,
                    model, tokenizer)
    except BaseException:
        if replaced is not None and latest_checkpoint(out_dir) is None:
            replaced.restore()
        raise


def _silent(message: str) -> None:
    pass


def deepspeed_launched() -> bool:
    """``accelerate launch`` with a DeepSpeed config (or its environment variables set by hand under torchrun)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and "LOCAL_RANK" in os.environ


def begin_micro_batch(model: nn.Module) -> None:
    """What DeepSpeed's engine ``forward`` does first, done here because the log-prob engine calls the decoder and
    head directly and so bypasses it: ZeRO counts the previous micro-batch as done when the next one starts
    (``clear_backward_seen_flag``). Without it ZeRO-3 treats every micro-batch as the first of its step, and each
    one's gradient replaces the last instead of adding to it. A no-op for anything but a DeepSpeed engine."""
    engine = deepspeed_engine(model)
    if engine is not None and hasattr(engine.optimizer, "clear_backward_seen_flag"):
        engine.optimizer.clear_backward_seen_flag()


def configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> None:
    """Fill DeepSpeed's ``auto`` fields from the alignkit config and refuse settings the loop cannot honour,
    before anything is written. DeepSpeed clips gradients and counts accumulation itself, so its values must
    be the config's; ZeRO-3's ``zero3_init_flag`` would partition the model while it loads, but the loop
    needs the whole model first (precomputed reference, frozen copy, LoRA) and partitions it in ``prepare``."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    if plugin.zero3_init_flag:
        raise ConfigError("DeepSpeed zero3_init_flag: true partitions the model while it loads; alignkit needs it "
                          "whole until accelerate prepares it. Set zero3_init_flag: false in the accelerate config "
                          "(ACCELERATE_DEEPSPEED_ZERO3_INIT=false under torchrun)")
    expected = {"gradient_accumulation_steps": config.gradient_accumulation_steps,
                "gradient_clipping": config.optim.max_grad_norm,
                "train_micro_batch_size_per_gpu": config.batch_size}
    for key, value in expected.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif float(ds[key]) != float(value) and key != "train_micro_batch_size_per_gpu":
            raise ConfigError(f"DeepSpeed {key}: {ds[key]} differs from the alignkit config's {value}; set them "
                              "equal (or 'auto' in the DeepSpeed config)")
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = (ds["train_micro_batch_size_per_gpu"] * config.gradient_accumulation_steps
                                  * accelerator.num_processes)  # DeepSpeed checks the product


def _run(config: TrainConfig, accelerator: Accelerator, method: Method, reference_mode: str, out_dir: Path,
         replaced: ReplacedRun | None, log: Callable[[str], None], stop_after_steps: int | None,
         model: nn.Module | None, tokenizer) -> RunResult:
    set_seed(config.seed)
    autocast_dtype = torch.bfloat16 if config.bf16 else None
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index

    handed = model  # a model handed in (tests) has no name to load again for the unsharded twin
    if model is None:
        model, tokenizer = load_base(config, config.model.device, log)
    model.to(accelerator.device)
    train_items, eval_items = method.load(tokenizer, out_dir, log)
    if main:
        atomic_write_text(out_dir / "config.yaml", dump_config(config))
    log(f"{world} process(es) x {config.batch_size} examples per micro-batch x {config.gradient_accumulation_steps} "
        f"accumulation step(s) = {world * config.batch_size * config.gradient_accumulation_steps} examples per "
        "optimizer step" + (" (token-budget micro-batches: sizes vary)" if config.max_tokens_per_batch else ""))

    precomputed = eval_precomputed = None
    if reference_mode == "precomputed":  # computed from the initial weights, before any adapter exists
        common = dict(pad_id=tokenizer.pad_token_id, batch_size=config.batch_size,
                      chunk_size=config.logprob_chunk_size, autocast_dtype=autocast_dtype,
                      score_prompt=method.score_prompt, log=log,
                      shared_prefix=config.layout == "shared_prefix" and layout_support(model, tokenizer.pad_token_id)
                      is None)
        # every process computes its share of the batches; the shares are gathered and the main process
        # writes the on-disk cache (a later run on the same data reads it, whatever its process count)
        show = config.progress and main
        common.update(rank=rank, world=world,
                      progress=lambda total: counted("reference log-probs (sequences)", total, show))
        precomputed = PrecomputedReference.build(model, tokenizer, method.reference_rows(train_items), **common)
        eval_precomputed = PrecomputedReference.build(model, tokenizer, method.reference_rows(eval_items), **common)
    frozen = FrozenCopyReference(model, config.logprob_chunk_size, autocast_dtype) \
        if reference_mode == "copy" else None
    lm, model = build_policy(model, config, method)  # before the optimizer and any checkpoint restore see it
    reference = frozen or (AdapterDisabledReference(lm, config.logprob_chunk_size, autocast_dtype)
                           if reference_mode == "adapter" else None)
    enable_activation_checkpointing(model, config.activation_checkpointing_every, full=config.activation_checkpointing,
                                    selective=config.selective_checkpointing)
    if world == 1 and accelerator.distributed_type == DistributedType.NO:
        accumulate_tied_embedding_sparsely(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = config.optim
    # the fused kernel: one pass over the parameters instead of foreach's temporaries (on SmolLM2's 135M
    # parameters 0.08 s and no extra memory per step, against 0.49 s and +0.5 GB; bench/README.md)
    fused = all(p.device.type in ("cpu", "cuda", "mps") and p.is_floating_point() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=optim.learning_rate, weight_decay=optim.weight_decay,
                                  betas=optim.adam_betas, fused=fused or None)
    scheduler = get_scheduler(optim.scheduler, optimizer, num_warmup_steps=optim.warmup_steps,
                              num_training_steps=config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()

    state = TrainerState(num_processes=world)
    if config.resume:
        checkpoint = latest_checkpoint(out_dir)
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, rank)
        if state.num_processes != world:
            raise CheckpointError(
                f"{checkpoint} was saved by a run with {state.num_processes} process(es) and this one has {world}: "
                "the data order is sharded per process count, so resume with the same number of processes")
        log(f"resumed from {checkpoint} at step {state.step}")
    run_log = RunLog(accelerator, out_dir, config)
    if main:
        truncate_metrics(run_log.path, state.step, config.max_steps, log)
    accelerator.wait_for_everyone()

    ctx = BatchContext(model, reference, tokenizer.pad_token_id, config.logprob_chunk_size, autocast_dtype,
                       accelerator.device, tokenizer)
    batches = micro_batches(config, train_items, start=state.micro_step, rank=rank, world=world)
    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    last_good = latest_checkpoint(out_dir)

    def run_eval() -> dict[str, float]:
        return sharded_evaluate(accelerator, method, ctx, eval_items, config.batch_size, eval_precomputed,
                                state.objective_state)

    evaluate = bool(eval_items)
    if not evaluate:
        log("no eval split (data.eval unset and eval_fraction 0, or max_eval_examples 0): evals are skipped")
    if state.step == 0 and config.eval_every and evaluate:  # the baseline every later eval is compared with
        eval_metrics = run_eval()
        run_log.write(0, "eval", eval_metrics)
        log(f"eval before training: {_short(eval_metrics)}")

    with TrainProgress(config.max_steps, state.step, enabled=config.progress) as progress:
        while state.step < config.max_steps:
            step_start, step_tokens, accumulated = time.perf_counter(), 0, []
            examples = 0
            for _ in range(config.gradient_accumulation_steps):
                indices = next(batches)
                examples += len(indices)
                with accelerator.accumulate(model):
                    begin_micro_batch(model)
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
            last_metrics["tokens_per_second"] = step_tokens / elapsed
            # one line per step whatever the process count: example-weighted means, throughput summed
            last_metrics = reduce_metrics(accelerator, last_metrics, examples, summed=("tokens_per_second",))
            last_metrics.update(learning_rate=scheduler.get_last_lr()[0], step_seconds=elapsed)
            if grad_norm is not None:
                last_metrics["grad_norm"] = grad_norm  # of the averaged gradient: the same on every process
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                run_log.write(state.step, "train", last_metrics)
            progress.update(state.step, last_metrics)

            if evaluate and config.eval_every and state.step % config.eval_every == 0 and state.step < config.max_steps:
                eval_metrics = run_eval()
                run_log.write(state.step, "eval", eval_metrics)
                progress.note(f"eval step {state.step}: " + _short(eval_metrics))
            if config.save_every and state.step % config.save_every == 0:
                # the main process writes (with every process's RNG state); the others wait until it is complete
                rng_states = gather_object([rng_state()]) if world > 1 else None
                training_state = gather_training_state(model, optimizer)  # every process: FSDP gathers shards
                main_first(accelerator, partial(save_checkpoint, out_dir, training_state, scheduler, state,
                                                keep=config.keep_checkpoints, rng_per_process=rng_states))
                last_good = latest_checkpoint(out_dir)
                if replaced is not None:  # the new run now has a checkpoint: the replaced one may go
                    replaced.discard()
                    replaced = None
            if stop_after_steps is not None and state.step >= stop_after_steps:
                run_log.close()
                return RunResult(out_dir, out_dir, accelerator.unwrap_model(model), state, last_metrics, eval_metrics)

    if evaluate:
        eval_metrics = run_eval()
        run_log.write(state.step, "eval", eval_metrics)
        log(f"final eval: {_short(eval_metrics)}")
    final_dir = out_dir / "final"
    if parameters_sharded(model):  # gather every shard, then save an unsharded twin built the same way
        full = gather_full_model(model)
        main_first(accelerator, lambda: save_final(plain_twin(config, method, full, handed), tokenizer, config,
                                                   final_dir, method))
    else:
        main_first(accelerator, lambda: save_final(accelerator.unwrap_model(model), tokenizer, config, final_dir,
                                                   method))
    log(f"saved final model to {final_dir}")
    if replaced is not None:
        replaced.discard()
    run_log.close()
    return RunResult(out_dir, final_dir, accelerator.unwrap_model(model), state, last_metrics, eval_metrics)


def load_base(config: TrainConfig, device: str, log: Callable[[str], None]):
    """(starting model, tokenizer) as the config names them: the run and its unsharded twin load them alike."""
    return load_model(config.model.name, dtype=config.model.dtype, device=device,
                      trust_remote_code=config.model.trust_remote_code, log=log)


def build_policy(base: nn.Module, config: TrainConfig, method: Method) -> tuple[nn.Module, nn.Module]:
    """(the language model, with its LoRA adapter when enabled; the module to train, the method's wrapper
    around it). The run and its unsharded twin for ``final/`` are both built here, so they cannot drift."""
    lm = attach_lora(base, config) if config.lora.enabled else base
    return lm, method.wrap_model(lm)


def plain_twin(config: TrainConfig, method: Method, full_state: dict[str, torch.Tensor],
               handed: nn.Module | None = None) -> nn.Module:
    """An unsharded copy of the trained model on CPU, built as the run built it (``load_base``, then
    ``build_policy``) and given the gathered weights: what ``save_final`` needs under FSDP or ZeRO-3. For a
    model ``handed`` to ``train`` there is nothing to load: the twin's base is a fresh model of its class and
    config (every weight is replaced by the gathered state anyway)."""
    from torch.distributed.fsdp import FSDPModule

    if handed is None:
        twin, _ = load_base(config, "cpu", _silent)
    else:  # FSDP2 swaps the class of a module it shards for an FSDP subclass: build the class it came from
        architecture = next(c for c in type(handed).__mro__ if not issubclass(c, FSDPModule))
        twin = architecture(handed.config).to(dtype=handed.dtype)
    twin = build_policy(twin, config, method)[1]
    twin.load_state_dict(full_state)  # strict: a name the gathered state lacks is a bug, not a default
    return twin


def save_final(model: nn.Module, tokenizer, config: TrainConfig, final_dir: Path, method: Method | None = None
               ) -> Path:
    """A directory ``AutoModelForCausalLM.from_pretrained`` loads: full weights, or adapter + base path.

    Written whole into a temporary directory and swapped in (``alignkit.io.atomic_directory``): a kill
    leaves the old ``final/`` or the new one, and nothing of an earlier run (an old adapter beside new full
    weights) survives into the new one."""

    def fill(tmp: Path) -> None:
        exported = method.export(model, tmp) if method is not None else model
        if config.lora.enabled and config.lora.merge_on_save:
            exported = exported.merge_and_unload()
        exported.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "alignkit_config.yaml").write_text(dump_config(config))

    return atomic_directory(final_dir, fill)


def _short(metrics: dict[str, float]) -> str:
    keys = [k for k in ("loss", "rewards/accuracies", "rewards/margins", "ranking/accuracy") if k in metrics]
    keys = keys or [k for k, v in metrics.items() if isinstance(v, (int, float))][:6]  # other methods' own metrics
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys)


class RunLog:
    """``metrics.jsonl`` (the source of truth the report reads) and accelerate's trackers (``report_to``:
    tensorboard, wandb, mlflow, ...), written by the main process only."""

    def __init__(self, accelerator: Accelerator, out_dir: Path, config: TrainConfig):
        self.accelerator, self.path = accelerator, out_dir / "metrics.jsonl"
        self.main = accelerator.is_main_process
        self.trackers = bool(config.report_to)
        if self.trackers:
            hyperparameters = {k: v for k, v in _flatten(config.model_dump(mode="json")).items()
                               if isinstance(v, int | float | str | bool)}
            accelerator.init_trackers("alignkit", config=hyperparameters)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.main:
            return
        append_jsonl(self.path, {"step": step, "split": split, **metrics})
        if self.trackers:
            self.accelerator.log({f"{split}/{key}": value for key, value in metrics.items()}, step=step)

    def close(self) -> None:
        if self.trackers:
            self.accelerator.end_training()  # flushes and closes every tracker


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


__all__ = ["RunResult", "TrainingDiverged", "save_final", "train"]
