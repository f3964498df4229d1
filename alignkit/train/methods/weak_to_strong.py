"""Weak-to-strong: a strong LM learns a binary task from a weak supervisor's labels (``weak_to_strong``).

Papers: Burns et al., ICML 2024, arXiv 2312.09390 (the protocol, PGR and the auxiliary confidence loss), and
Ye, Xiao, Hui, ICLR 2025 Bi-Align workshop, arXiv 2410.12621 (the same protocol on safety, legal and toxicity
tasks, plain cross-entropy on hard weak labels). The losses and PGR are in ``alignkit.objectives.weak_to_strong``.

Protocol (Burns' ``train_weak_to_strong.py``): the training split is cut in two (``weak_fraction``, seeded).

1. The **weak supervisor** is fitted on ground truth of part 1. Here it is a linear probe: a class-balanced
   logistic regression on the mean-pooled hidden states of layer ``weak_layer`` of ``weak_model`` (default:
   the starting weights of the policy itself, i.e. its first few layers), as the method notes propose for a
   135M strong model. It is fitted once, from the starting weights, before training (a resumed run refits the
   very same probe).
2. It labels part 2: P(positive) (``weak_soft: true``, Burns) or its argmax (``false``, the pilot's hard labels).
   The labels are written to ``weak_labels.jsonl`` in the run directory.
3. The **strong student** (the policy) trains on part 2 with those labels: ``loss: xent`` or ``logconf``.
   ``labels: ground_truth`` trains on part 2's true labels instead: the **ceiling** run.
4. Each eval scores student and weak probe on the eval split against the truth (``accuracy``,
   ``weak/accuracy``) and writes ``w2s_eval_predictions.jsonl``; :func:`pgr_from_runs` turns a weak-label run
   and its ceiling run into PGR with a bootstrap interval.

The student is the LM itself: a prompt that ends with ``instruction``, and as its two answers the responses
``positive_label`` and ``negative_label``; the class logits are their summed log-probs, so the softmax over
them is the classifier (no new head). Data: ``data.train: synthetic`` turns each synthetic pair into two
examples, "Request … Response …" with the chosen (positive) or rejected (negative) response; a file needs
``text`` and ``label`` (true/false, 1/0, "yes"/"no"; ``data.column_map`` renames, e.g. ``{label: is_safe}``).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from alignkit.data.convert import RowContext
from alignkit.data.readers import read_rows
from alignkit.data.tokenize import encode_pair
from alignkit.engine.layouts import collate
from alignkit.engine.logprobs import sequence_logps
from alignkit.io import read_jsonl, write_jsonl
from alignkit.models import load_model
from alignkit.objectives.binary import fit_udm_classifier
from alignkit.objectives.params import Params
from alignkit.objectives.weak_to_strong import class_logits, logconf_loss, pgr_bootstrap, xent_loss
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, prompt_encoder, read_splits, rejected_rows_path
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method

WEAK_LABELS_FILE = "weak_labels.jsonl"
PREDICTIONS_FILE = "w2s_eval_predictions.jsonl"
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "safe", "positive"}, {"0", "false", "no", "unsafe", "negative"}


class WeakToStrongParams(Params):
    loss: Literal["xent", "logconf"] = Field("logconf", description="xent: cross-entropy on weak labels; logconf: "
                                                                    "Burns' auxiliary confidence loss")
    labels: Literal["weak", "ground_truth"] = Field("weak", description="ground_truth trains the ceiling on the "
                                                                        "same examples")
    weak_model: str | None = Field(None, description="model spec of the weak supervisor's features; None: the "
                                                     "policy's starting weights")
    weak_layer: int = Field(1, ge=0, description="hidden layer whose mean-pooled states feed the weak linear probe "
                                                 "(0 = embeddings)")
    weak_fraction: float = Field(0.5, gt=0, lt=1, description="share of train examples with ground truth for the "
                                                              "weak supervisor; the student trains on the rest")
    weak_soft: bool = Field(True, description="soft weak labels P(positive) (Burns); false: hard argmax labels "
                                              "(the pilot)")
    aux_coef: float = Field(0.5, ge=0, le=1, description="logconf: final weight of the student's hardened "
                                                         "predictions (Burns: 0.5)")
    warmup_frac: float = Field(0.1, ge=0, le=1, description="logconf: share of training during which the weight "
                                                            "ramps up (Burns: 0.1)")
    instruction: str = Field("Is the response a correct answer that follows the request? Answer Yes or No.",
                             description="appended to every example's text as the question the classifier answers")
    positive_label: str = Field("Yes", min_length=1, description="the answer meaning the positive class")
    negative_label: str = Field("No", min_length=1, description="the answer meaning the negative class")


@dataclass
class ClassificationItem:
    prompt: list[int]  # text + instruction, chat-templated
    positive: list[int]  # response tokens of positive_label / negative_label
    negative: list[int]
    gold: bool
    weak_prob: float = math.nan  # the weak supervisor's P(positive); filled before training
    prompt_truncated: bool = False
    response_truncated: bool = False


def read_classification(source: str, config: TrainConfig, run_dir: Path, log: Callable[[str], None]
                        ) -> list[tuple[str, bool]]:
    """(text, label) rows of a JSONL/CSV/... file with ``text`` and ``label`` fields."""
    def build(row: dict, ctx: RowContext) -> tuple[str, bool]:
        values = {f: row.get(ctx.column_map.get(f, f)) for f in ("text", "label")}
        if not isinstance(values["text"], str) or not values["text"].strip():
            raise ctx.error("text is missing or empty", "text")
        return values["text"], parse_label(values["label"], ctx)

    data = config.data
    return read_rows(source, build, column_map=data.column_map, on_invalid=data.on_invalid,
                     rejected_rows_path=rejected_rows_path(run_dir, config, source), log=log).records


def parse_label(value, ctx: RowContext) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ctx.error(f"label must be true/false, 1/0 or yes/no, got {value!r}", "label")


def synthetic_examples(pairs: list) -> list[tuple[str, bool]]:
    """Two examples per synthetic pair: its chosen response (positive) and its rejected one (negative)."""
    return [(f"Request: {p.prompt}\nResponse: {response}", good)
            for p in pairs for response, good in ((p.chosen, True), (p.rejected, False))]


class _EnoughLayers(Exception):
    """Raised by a forward hook once the layer the probe reads has run: the layers above it are not needed."""

    def __init__(self, hidden: Tensor):
        self.hidden = hidden


def _stop_after(model: nn.Module, layer: int):
    """A hook handle that stops the forward with ``hidden_states[layer]`` (0 = embeddings, k = decoder layer k's
    output), or None when the model's layout is unknown or ``layer`` is the last (whose state is normed)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if decoder is None or layers is None or not hasattr(decoder, "embed_tokens") or layer >= len(layers):
        return None
    module = decoder.embed_tokens if layer == 0 else layers[layer - 1]

    def stop(_module, _inputs, output):
        raise _EnoughLayers(output[0] if isinstance(output, tuple) else output)

    return module.register_forward_hook(stop)


@torch.no_grad()
def layer_features(model: nn.Module, prompts: list[list[int]], pad_id: int, layer: int, batch_size: int) -> Tensor:
    """[N, hidden] float32 CPU: hidden states of ``layer`` mean-pooled over each prompt's tokens (eval mode).
    The forward stops once that layer has run (a probe on layer 1 of a 30-layer model costs two layers)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    chunks = []
    hook = _stop_after(model, layer)
    try:
        for start in range(0, len(prompts), batch_size):
            batch = collate([(p, []) for p in prompts[start:start + batch_size]], pad_id).to(device)
            if hook is not None:
                try:
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                    raise RuntimeError("weak_to_strong: the forward ran past the probed layer's hook")
                except _EnoughLayers as stopped:
                    state = stopped.hidden
            else:
                hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               output_hidden_states=True).hidden_states
                if layer >= len(hidden):
                    raise ValueError(f"weak_to_strong: weak_layer {layer} does not exist; the weak model has "
                                     f"{len(hidden) - 1} layers")
                state = hidden[layer]
            mask = batch.attention_mask.unsqueeze(-1).float()
            chunks.append(((state.float() * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    return torch.cat(chunks)


@register_method("weak_to_strong", params=WeakToStrongParams)
class WeakToStrongMethod(Method):
    """Parameters: :class:`WeakToStrongParams`, e.g. ``objectives: [{name: weak_to_strong, loss: logconf}]``."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, WeakToStrongParams)
        self.weight = config.objectives[0].weight
        self.weak_half: list[ClassificationItem] = []
        self.student: list[ClassificationItem] = []
        self.eval_items: list[ClassificationItem] = []
        self.pad_id = 0
        self.run_dir = Path(config.output_dir)
        self._log: Callable[[str], None] = print
        self._predictions: dict[int, float] = {}  # eval index -> student P(positive), filled by eval steps

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        self.run_dir, self._log = Path(run_dir), log
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        config, p = self.config, self.params
        train, evaluation = read_splits(config, synthetic_examples,
                                        lambda source: read_classification(source, config, run_dir, log))
        encoder = prompt_encoder(tokenizer, config)

        def encode(example: tuple[str, bool]) -> ClassificationItem:
            text, gold = example
            e = encode_pair(encoder, f"{text}\n\n{p.instruction}", p.positive_label, p.negative_label, None,
                            config.data.max_length, config.data.max_prompt_length)
            return ClassificationItem(e.prompt, e.chosen, e.rejected, gold, math.nan, e.prompt_truncated,
                                      e.response_truncated)

        train_items, self.eval_items = encode_splits((train, evaluation), encode, config.data.max_length, log)
        order = torch.randperm(len(train_items), generator=torch.Generator().manual_seed(config.seed)).tolist()
        n_weak = round(len(order) * p.weak_fraction)
        if n_weak < 2 or len(order) - n_weak < 2:
            raise ValueError(f"weak_to_strong: {len(order)} train examples are too few to split "
                             f"{p.weak_fraction} / {1 - p.weak_fraction} between weak supervisor and student")
        self.weak_half = [train_items[i] for i in order[:n_weak]]
        self.student = student = [train_items[i] for i in sorted(order[n_weak:])]
        log(f"data: {len(self.weak_half)} examples train the weak supervisor, {len(student)} the student "
            f"(on {p.labels.replace('_', ' ')} labels), {len(self.eval_items)} eval")
        return student, self.eval_items

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Fits the weak probe from the starting weights (the loop calls this before any checkpoint restore;
        a fresh LoRA adapter changes nothing) and labels the student's examples with it."""
        student, p, spec = self.student, self.params, self.config.model
        if not student:
            raise RuntimeError("weak_to_strong: load() must run before wrap_model()")
        weak_model, pad_id = model, self.pad_id
        if p.weak_model is not None:  # must share the policy's tokenizer: it reads the same token ids
            weak_model, _ = load_model(p.weak_model, dtype=spec.dtype, device=spec.device,
                                       trust_remote_code=spec.trust_remote_code, log=self._log)
        everything = self.weak_half + student + self.eval_items
        features = layer_features(weak_model, [item.prompt for item in everything], pad_id, p.weak_layer,
                                  self.config.batch_size)
        gold = torch.tensor([item.gold for item in self.weak_half])
        fit = features[:len(self.weak_half)]
        if gold.all() or not gold.any():
            raise ValueError("weak_to_strong: the weak supervisor's share of the train split holds one class only")
        probe = fit_udm_classifier(fit[gold], fit[~gold])
        probs = probe.prob_desirable(features[len(self.weak_half):])
        for item, prob in zip(student + self.eval_items, probs.tolist(), strict=True):
            item.weak_prob = prob if p.weak_soft else float(prob > 0.5)
        if weak_model is not model:
            del weak_model
            gc.collect()
        weak_acc = sum((it.weak_prob > 0.5) == it.gold for it in student) / len(student)
        self._log(f"weak supervisor: linear probe on layer {p.weak_layer}, accuracy {weak_acc:.3f} on the student's "
                  f"examples it labels")
        write_jsonl(self.run_dir / WEAK_LABELS_FILE,
                    [{"index": i, "weak_prob": it.weak_prob, "gold": it.gold} for i, it in enumerate(student)])
        return model

    def reference_rows(self, items: list) -> Rows:
        return [(item.prompt, item.positive) for item in items]  # unused: no reference model

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        batch_items = [items[i] for i in indices]
        rows = [(it.prompt, it.positive) for it in batch_items] + [(it.prompt, it.negative) for it in batch_items]
        batch = collate(rows, ctx.pad_id).to(ctx.device)
        logps = sequence_logps(ctx.model, batch, ctx.chunk_size, ctx.autocast_dtype).logps
        logits = class_logits(logps[:len(indices)], logps[len(indices):])
        gold = torch.tensor([float(it.gold) for it in batch_items], device=ctx.device)
        weak = torch.tensor([it.weak_prob for it in batch_items], device=ctx.device)
        if training:
            target = gold if self.params.labels == "ground_truth" else weak
            if self.params.loss == "logconf":
                progress = state.setdefault("weak_to_strong", {"micro_steps": 0})
                total = self.config.max_steps * self.config.gradient_accumulation_steps
                out = logconf_loss(logits, target, progress["micro_steps"] / total, self.params.aux_coef,
                                   self.params.warmup_frac)
                progress["micro_steps"] += 1
            else:
                out = xent_loss(logits, target)
        else:  # evaluation always measures against the truth
            out = xent_loss(logits, gold)
            probs = torch.softmax(logits.detach(), -1)[:, 1].tolist()
            self._predictions.update(zip(indices, probs, strict=True))
        loss = self.weight * out.loss.mean()
        strong_positive = logits.detach().argmax(-1) == 1
        metrics = {key: float(value) for key, value in out.metrics.items()}
        metrics.update({"loss": loss.item(), "accuracy": (strong_positive == gold.bool()).float().mean().item(),
                        "weak/accuracy": ((weak > 0.5) == gold.bool()).float().mean().item(),
                        "w2s/agreement_with_weak": (strong_positive == (weak > 0.5)).float().mean().item()})
        return StepOutput(loss, metrics, batch.num_tokens)

    def evaluate_sums(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict,
                      rank: int = 0, world: int = 1) -> tuple[dict[str, float], int]:
        """The usual metric sums; a single-process eval of the eval split also writes every example's student
        and weak predictions to ``w2s_eval_predictions.jsonl`` (overwritten by each eval: the last is final)."""
        self._predictions = {}
        sums, count = super().evaluate_sums(ctx, items, batch_size, precomputed, state, rank, world)
        if world == 1 and items is self.eval_items and len(self._predictions) == len(items):
            write_jsonl(self.run_dir / PREDICTIONS_FILE, [
                {"index": i, "gold": it.gold, "student_prob": self._predictions[i], "weak_prob": it.weak_prob,
                 "student_correct": (self._predictions[i] > 0.5) == it.gold, "weak_correct": (it.weak_prob > 0.5)
                 == it.gold} for i, it in enumerate(items)])
        return sums, count


def pgr_from_runs(weak_to_strong_dir: str | Path, ceiling_dir: str | Path, n_boot: int = 1000, seed: int = 0
                  ) -> dict[str, float]:
    """PGR of eval accuracy from a weak-label run and its ``labels: ground_truth`` ceiling run (same data and
    seed), with a paired bootstrap interval (:func:`alignkit.objectives.weak_to_strong.pgr_bootstrap`). The
    weak model's accuracy is the probe's, read from the weak-label run."""
    runs = [read_jsonl(Path(d) / PREDICTIONS_FILE) for d in (weak_to_strong_dir, ceiling_dir)]
    if [r["gold"] for r in runs[0]] != [r["gold"] for r in runs[1]]:
        raise ValueError(f"{weak_to_strong_dir} and {ceiling_dir} were evaluated on different examples; run both "
                         "with the same data and seed")
    weak = torch.tensor([float(r["weak_correct"]) for r in runs[0]])
    w2s, ceiling = (torch.tensor([float(r["student_correct"]) for r in run]) for run in runs)
    return pgr_bootstrap(weak, w2s, ceiling, n_boot=n_boot, seed=seed)


__all__ = ["ClassificationItem", "WeakToStrongMethod", "WeakToStrongParams", "pgr_from_runs"]
