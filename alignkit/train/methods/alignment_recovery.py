"""Alignment recovery after fine-tuning: restore alignment-critical weights, roll back costly ones
(``alignment_recovery``).

Paper: Yang et al., "Alleviating the Fear of Losing Alignment in LLM Fine-tuning", IEEE S&P 2025,
arXiv 2504.09757 (code ``kangyangWHU/LLMAlignment``); the tensor pieces are in
``alignkit.objectives.alignment_recovery``. The run's model (``model.name``) is the *fine-tuned* model W_F;
``aligned_model`` is the aligned model W_A it was fine-tuned from. No gradient training happens: each step edits
weights directly (the loop's optimizer sees zero gradients, so ``lora.enabled: false`` and weight decay 0 are
required), and the loop's checkpoints, logging and evaluation are reused.

* Directions (computed once, before the first step): ``d_h``, W_A's mean last-token hidden state at layer
  ``layer_end`` on the harmful recovery set; ``d_b``, W_F's on the task data.
* Recovery step: gradient of ``−cos(mean h(W; harmful batch), d_h)`` w.r.t. the weights of layers below
  ``layer_end`` (norms excluded); among the weights where restoring W_A is a descent direction, the global top
  ``sparsity · N`` by |gradient| are set to W_A.
* Rollback: after ``warmup_steps`` steps the utility (verifier pass rate on the held-out task prompts) is
  measured; if it fell below ``(1 − metric_drop)`` of W_F's, the model restarts from W_F and from then on every
  recovery step is followed by a rollback step: gradient of ``−cos(mean h(W; task batch), d_b)``; among the
  weights just restored, where going back to W_F is a descent direction, the top ``rollback_rate`` share by
  |gradient| returns to W_F.
* Evaluation (held-out prompts, greedy): ``recovery/harmful_compliance`` (share of harmful prompts not refused,
  by the synthetic verifier), ``recovery/utility`` (task verifier pass rate) and ``recovery/aligned_fraction``
  (share of the recoverable weights equal to W_A's).

Data: ``data.train: synthetic``; the refusal family's prompts with their refusals are the harmful recovery set,
the other families the task data (the paper: 256 BeaverTails prompts and the fine-tuning task).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor, nn

from alignkit.data.synthetic import family_of, verify
from alignkit.data.tokenize import PromptEncoder
from alignkit.engine.generation import generate
from alignkit.engine.layouts import collate
from alignkit.models import load_model
from alignkit.objectives.alignment_recovery import direction_loss, top_k_masks, toward_mask
from alignkit.objectives.params import Params
from alignkit.train.config import TrainConfig
from alignkit.train.data import read_splits
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method

LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


class AlignmentRecoveryParams(Params):
    aligned_model: str | None = Field(None, description="model spec of the aligned model W_A; required")
    layer_end: int | None = Field(None, ge=1, description="hidden layer of the directions; weights below it are "
                                                          "recovered (None: floor(4/6 · layers))")
    sparsity: float = Field(0.002, gt=0, le=1, description="share of recoverable weights restored per step")
    rollback_rate: float = Field(0.2, ge=0, le=1, description="share of just-restored weights rolled back per step")
    warmup_steps: int = Field(5, ge=0, description="recovery steps before the utility check that enables rollback")
    metric_drop: float = Field(0.05, ge=0, lt=1, description="allowed relative utility drop before rollback")
    eval_max_new_tokens: int = Field(32, ge=1, description="greedy tokens per held-out prompt in evaluation")


def last_token_hidden(model: nn.Module, prompts: list[list[int]], pad_id: int, layer: int) -> Tensor:
    """[B, D] hidden state of ``layer`` at each prompt's last token (right padding)."""
    device = next(model.parameters()).device
    batch = collate([(p, []) for p in prompts], pad_id).to(device)
    hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   output_hidden_states=True).hidden_states[layer]
    last = batch.attention_mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0], device=device), last]


def recoverable(model: nn.Module, layer_end: int) -> dict[str, nn.Parameter]:
    """The weights the method edits: those of decoder layers below ``layer_end``, norms excluded."""
    out = {}
    for name, param in model.named_parameters():
        match = LAYER_INDEX.search(name)
        if match and int(match.group(1)) < layer_end and "norm" not in name:
            out[name] = param
    return out


def move_toward(params: dict[str, nn.Parameter], target: dict[str, Tensor], loss: Tensor, k: int,
                allowed: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Set the top-``k`` |grad| entries (among ``allowed``) where moving to ``target`` descends ``loss`` to their
    ``target`` value; returns the masks of the entries changed."""
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    candidates = {n: toward_mask(p.detach(), target[n], grads[n]) for n, p in params.items()}
    if allowed is not None:
        candidates = {n: c & allowed[n] for n, c in candidates.items()}
    masks = top_k_masks(grads, candidates, k)
    with torch.no_grad():
        for name, param in params.items():
            param[masks[name]] = target[name][masks[name]]
    return masks


@register_method("alignment_recovery", params=AlignmentRecoveryParams)
class AlignmentRecoveryMethod(Method):
    """Parameters: :class:`AlignmentRecoveryParams`, e.g. ``objectives: [{name: alignment_recovery,
    aligned_model: smollm2-135m-instruct}]`` with ``model.name`` the fine-tuned model."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.params = method_params(config, AlignmentRecoveryParams)
        if not self.params.aligned_model:
            raise ValueError("alignment_recovery: aligned_model must name the aligned model W_A")
        if config.lora.enabled or config.optim.weight_decay:
            raise ValueError("alignment_recovery edits the full weights: set lora.enabled=false and "
                             "optim.weight_decay=0")
        if config.data.train != "synthetic":
            raise ValueError("alignment_recovery reads its harmful and task prompts from data.train: synthetic")
        self.aligned: dict[str, Tensor] = {}
        self.finetuned: dict[str, Tensor] = {}
        self.directions: tuple[Tensor, Tensor] | None = None
        self.eval_sets: tuple[list, list] = ([], [])
        self._log: Callable[[str], None] = print
        self._tokenizer = None
        self._layer_end = 0
        self.train_items: list[tuple[list[int], list[int]]] = []

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        """Train items: (harmful prompt ids, task prompt ids) pairs; eval: held-out (text, kind) prompts."""
        self._log, self._tokenizer = log, tokenizer
        encoder = PromptEncoder(tokenizer, self.config.data.use_chat_template)
        train, evaluation = read_splits(self.config, lambda pairs: pairs, lambda source: [])
        harmful = [encoder.encode_prompt(p.prompt, p.system) for p in train if family_of(p.prompt) == "refusal"]
        task = [encoder.encode_prompt(p.prompt, p.system) for p in train if family_of(p.prompt) != "refusal"]
        if not harmful or not task:
            raise ValueError("alignment_recovery: the synthetic train split needs refusal and task prompts")
        items = [(harmful[i % len(harmful)], task[i % len(task)]) for i in range(max(len(harmful), len(task)))]
        self.train_items = items
        self.eval_sets = ([p.prompt for p in evaluation if family_of(p.prompt) == "refusal"],
                          [p.prompt for p in evaluation if family_of(p.prompt) != "refusal"])
        log(f"data: {len(harmful)} harmful and {len(task)} task prompts for recovery; held out "
            f"{len(self.eval_sets[0])} harmful and {len(self.eval_sets[1])} task prompts")
        return items, [None]  # one placeholder so the loop runs the (whole-set) evaluation

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Keeps W_F (the starting weights), loads W_A's recoverable weights, computes d_h and d_b."""
        n_layers = model.config.num_hidden_layers
        self._layer_end = self.params.layer_end or max(1, (4 * n_layers) // 6)
        if self._layer_end > n_layers:
            raise ValueError(f"alignment_recovery: layer_end {self._layer_end} > the model's {n_layers} layers")
        params = recoverable(model, self._layer_end)
        self.finetuned = {n: p.detach().clone() for n, p in params.items()}
        spec = self.config.model
        aligned, _ = load_model(self.params.aligned_model, dtype=spec.dtype, device=spec.device,
                                trust_remote_code=spec.trust_remote_code, log=self._log)
        aligned_params = dict(aligned.named_parameters())
        self.aligned = {n: aligned_params[n].detach().to(p.device, p.dtype).clone() for n, p in params.items()}
        pad = self._tokenizer.pad_token_id
        harmful = list({tuple(h): h for h, _ in self.train_items}.values())
        task = list({tuple(t): t for _, t in self.train_items}.values())
        with torch.no_grad():
            d_h = last_token_hidden(aligned, harmful, pad, self._layer_end).float().mean(0)
            d_b = last_token_hidden(model, task, pad, self._layer_end).float().mean(0)
        self.directions = (d_h, d_b)
        del aligned
        return model

    def reference_rows(self, items: list) -> Rows:
        return []

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        assert self.directions is not None, "wrap_model sets up W_A, W_F and the directions"
        progress = state.setdefault("alignment_recovery", {"steps": 0, "rollback": False, "utility0": None})
        model, pad, layer = ctx.model, ctx.pad_id, self._layer_end
        params = recoverable(model, layer)
        if progress["utility0"] is None:
            progress["utility0"] = self.utility(ctx)
        if progress["steps"] == self.params.warmup_steps and not progress["rollback"]:
            utility = self.utility(ctx)
            if utility < (1 - self.params.metric_drop) * progress["utility0"]:
                self._log(f"alignment recovery: utility {utility:.3f} < (1 − {self.params.metric_drop}) × "
                          f"{progress['utility0']:.3f}; restarting from W_F with rollback")
                with torch.no_grad():
                    for name, param in params.items():
                        param.copy_(self.finetuned[name])
                progress["rollback"] = True
        n_params = sum(p.numel() for p in params.values())
        harm_loss = direction_loss(last_token_hidden(model, [items[i][0] for i in indices], pad, layer),
                                   self.directions[0])
        restored = move_toward(params, self.aligned, harm_loss, int(self.params.sparsity * n_params))
        n_restored = sum(int(m.sum()) for m in restored.values())
        rolled = 0
        if progress["rollback"] and n_restored:
            benign_loss = direction_loss(last_token_hidden(model, [items[i][1] for i in indices], pad, layer),
                                         self.directions[1])
            back = move_toward(params, self.finetuned, benign_loss, int(self.params.rollback_rate * n_restored),
                               allowed=restored)
            rolled = sum(int(m.sum()) for m in back.values())
        progress["steps"] += 1
        zero = sum(p.sum() for p in params.values()) * 0.0  # the loop's backward and optimizer step: no-ops
        metrics = {"loss": harm_loss.item(), "recovery/restored": float(n_restored),
                   "recovery/rolled_back": float(rolled), "recovery/rollback_active": float(progress["rollback"]),
                   "recovery/aligned_fraction": self.aligned_fraction(params)}
        return StepOutput(zero, metrics, 0)

    def aligned_fraction(self, params: dict[str, nn.Parameter]) -> float:
        same = sum(int((p.detach() == self.aligned[n]).sum()) for n, p in params.items())
        return same / max(sum(p.numel() for p in params.values()), 1)

    def pass_rate(self, ctx: BatchContext, prompts: list[str]) -> float:
        if not prompts:
            return float("nan")
        replies = generate(ctx.model, self._tokenizer, prompts, max_new_tokens=self.params.eval_max_new_tokens,
                           batch_size=self.config.batch_size, use_chat_template=self.config.data.use_chat_template)
        return sum(verify(p, r) for p, r in zip(prompts, replies, strict=True)) / len(prompts)

    def utility(self, ctx: BatchContext) -> float:
        return self.pass_rate(ctx, self.eval_sets[1])

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        with torch.no_grad():
            refused = self.pass_rate(ctx, self.eval_sets[0])
            return {"recovery/harmful_compliance": 1 - refused, "recovery/utility": self.utility(ctx),
                    "recovery/aligned_fraction": self.aligned_fraction(recoverable(ctx.model, self._layer_end)),
                    "loss": 1 - refused}
