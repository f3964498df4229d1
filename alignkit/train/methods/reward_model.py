"""Bradley-Terry reward models: a scalar head on a causal-LM backbone, trained on preference pairs.

The loss is :func:`alignkit.objectives.bradley_terry.bradley_terry_loss` (Bradley & Terry, Biometrika 1952;
the reward-model recipe of Stiennon et al., arXiv 2009.01325, and Ouyang et al., arXiv 2203.02155), checked
against TRL 1.16's ``RewardTrainer`` step by step (``tests/rewards/test_bradley_terry_trl.py``).

* **Model.** The loop loads the causal LM; :meth:`BradleyTerryMethod.wrap_model` builds transformers'
  ``AutoModelForSequenceClassification`` with ``num_labels=1`` from its config, *sharing* the loaded backbone
  and adding a freshly initialised ``score`` head (the model's own ``_init_weights``, as ``from_pretrained``
  gives TRL). With ``lora.enabled`` the loop's causal-LM adapter is dropped (it is untrained) and a
  ``task_type="SEQ_CLS"`` adapter with ``modules_to_save=["score"]`` is attached instead, so the head trains in
  full while the backbone adapts through LoRA.
* **Score position.** transformers' sequence classifiers read the score at the last token that is not
  ``pad_token_id``; training reads it at exactly that token. Responses are encoded as the chat template writes
  the whole conversation (``PromptEncoder(response_end="template")``: ChatML keeps the newline after
  ``<|im_end|>``, the text TRL and :class:`alignkit.rewards.RewardModel` tokenize), and trailing pad-id tokens
  (EOS when pad = EOS, as for SmolLM2 without a template) are cut, since the classifier skips them.
* **One forward per batch.** Chosen and rejected go through the engine's shared-prefix layout (each prompt
  fed once, ``packing`` several pairs per row) when it is exact for the model
  (``alignkit.engine.exactness.layout_support``), else padded rows; the score head reads the hidden state at
  each response's last token (``alignkit.engine.heads``).
* **Margins.** When pairs carry ``metadata[margin_key]`` (a ``margin`` column), the loss is
  −log σ(r_c − r_r − m) as TRL's with a ``margin`` column; ``center_rewards_coefficient`` adds c·(r_c + r_r)².
* **Export.** ``final/`` holds full weights (a LoRA adapter is merged) of e.g. ``LlamaForSequenceClassification``,
  so ``AutoModelForSequenceClassification.from_pretrained(final)`` loads it unchanged, and
  ``alignkit eval final --data PAIRS`` reports reward accuracy (``alignkit.eval.reward_models``).

Under data parallelism the method calls the backbone and head directly (as MAH-DPO does), not the wrapped
module's ``forward``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from alignkit.data.records import PreferencePair
from alignkit.data.tokenize import PromptEncoder, encode_pair
from alignkit.engine.exactness import layout_support
from alignkit.engine.heads import hidden_at, last_token_positions
from alignkit.engine.logprobs import packing_capacity
from alignkit.engine.pairs import Layout, PairRows, pair_batch
from alignkit.objectives.bradley_terry import bradley_terry_loss
from alignkit.objectives.params import Params
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, load_source, read_splits
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method


class BradleyTerryParams(Params):
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="c of the auxiliary c·(r_chosen + r_rejected)² that centres rewards (TRL's name)")
    margin_key: str | None = Field("margin", description="pair metadata field holding a per-pair margin "
                                                         "(used when the pairs carry it); null: never")


@dataclass
class EncodedRewardPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    margin: float | None = None
    prompt_truncated: bool = False
    response_truncated: bool = False


def score_rows(prompt: list[int], chosen: list[int], rejected: list[int], pad_id: int) -> PairRows:
    """The pair as the engine lays it out so that each side's last token is the one a transformers sequence
    classifier reads (the last token that is not ``pad_id``): trailing pad-id tokens are cut, and when that
    empties a response the prompt's tail moves into both responses (the prompt stays shared)."""
    def end(ids: list[int]) -> int:
        n = len(ids)
        while n and ids[n - 1] == pad_id:
            n -= 1
        return n

    full_c, full_r = prompt + chosen, prompt + rejected
    end_c, end_r = end(full_c), end(full_r)
    if min(end_c, end_r) < 2:
        raise ValueError("a pair side has fewer than two tokens that are not the pad token: nothing to score")
    split = min(len(prompt), end_c - 1, end_r - 1)
    return PairRows(full_c[:split], full_c[split:end_c], full_r[split:end_r])


def score_module(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder, score head) of a sequence-classification model, PEFT-wrapped or not (the head may be PEFT's
    ``ModulesToSaveWrapper``, which calls its trainable copy)."""
    model = getattr(model, "module", model)  # DDP
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    head = getattr(base, "score", None)
    if head is None:
        raise ValueError(f"{type(base).__name__} has no 'score' head; bradley_terry needs a transformers "
                         "*ForSequenceClassification model of a causal LM")
    return base.base_model, head


def sequence_classifier(lm: nn.Module, pad_id: int) -> nn.Module:
    """``AutoModelForSequenceClassification`` (``num_labels=1``) sharing ``lm``'s backbone, with a freshly
    initialised score head on the same device and dtype.

    The classifier is built on the meta device: its own backbone would be thrown away for ``lm``'s, and
    allocating and initialising it would hold a second copy of the model's weights for a moment (and, on CPU,
    leave that memory to the allocator) and cost seconds. Only the head is then materialised and initialised."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(lm.config)
    config.num_labels, config.architectures, config.pad_token_id = 1, None, pad_id
    config.problem_type = None
    parameter = next(lm.parameters())
    with torch.device("meta"):
        classifier = AutoModelForSequenceClassification.from_config(
            config, dtype=parameter.dtype, attn_implementation=getattr(lm.config, "_attn_implementation", None))
    backbone = classifier.base_model_prefix
    setattr(classifier, backbone, getattr(lm, lm.base_model_prefix))  # shared, not copied
    if getattr(classifier, "score", None) is None:
        raise ValueError(f"{type(classifier).__name__} has no 'score' head; bradley_terry needs a transformers "
                         "*ForSequenceClassification model of a causal LM")
    head = classifier.score.to_empty(device=parameter.device)
    with torch.no_grad():
        classifier._init_weights(head)  # the model's own initialisation, as from_pretrained gives a missing head
    left = [name for name, tensor in [*classifier.named_parameters(), *classifier.named_buffers()] if tensor.is_meta]
    if left:
        raise ValueError(f"{type(classifier).__name__} has weights outside its backbone and score head "
                         f"({', '.join(left[:3])}); bradley_terry does not know how to initialise them")
    return classifier


@register_method("bradley_terry", params=BradleyTerryParams)
class BradleyTerryMethod(Method):
    """Parameters: :class:`BradleyTerryParams`, e.g. ``objectives: [{name: bradley_terry,
    center_rewards_coefficient: 0.01}]``. Data: the preference pairs the DPO family reads."""

    needs_reference = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        params = method_params(config, BradleyTerryParams)
        self.weight = config.objectives[0].weight
        self.center = params.center_rewards_coefficient
        self.margin_key = params.margin_key
        self.pad_id: int | None = None
        self.layout: Layout = "padded"
        self._log: Callable[[str], None] = print

    # ------------------------------------------------------------ data

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        self._log, data = log, self.config.data
        self.pad_id = tokenizer.pad_token_id
        train, evaluation = read_splits(self.config, lambda pairs: pairs,
                                        lambda source: load_source(source, self.config, run_dir, log))
        if any(not isinstance(r, PreferencePair) for r in train + evaluation):
            raise ValueError("bradley_terry trains on preference pairs (data.kind: pair); got other records")
        key = self.margin_key
        with_margin = [key is not None and key in p.metadata for p in train + evaluation]
        if any(with_margin) and not all(with_margin):
            missing = with_margin.index(False)
            raise ValueError(f"bradley_terry: some pairs carry a {key!r} margin and some do not (the first without "
                             f"is pair {missing}); give every pair one, or set margin_key: null")
        use_margin = bool(with_margin) and all(with_margin)
        encoder = PromptEncoder(tokenizer, data.use_chat_template, response_end="template")

        def encode(pair: PreferencePair) -> EncodedRewardPair:
            e = encode_pair(encoder, pair.prompt, pair.chosen, pair.rejected, pair.system, data.max_length,
                            data.max_prompt_length)
            margin = _margin(pair.metadata[key], key) if use_margin else None
            return EncodedRewardPair(e.prompt, e.chosen, e.rejected, margin, e.prompt_truncated,
                                     e.response_truncated)

        encoded = encode_splits((train, evaluation), encode, data.max_length, log)
        log(f"data: {len(train)} train and {len(evaluation)} eval pairs" + (f" with {key!r} margins"
                                                                              if use_margin else ""))
        return encoded[0], encoded[1]

    def reference_rows(self, items: list) -> Rows:
        return []  # no reference model

    # ------------------------------------------------------------ model

    def wrap_model(self, model: nn.Module) -> nn.Module:
        assert self.pad_id is not None, "load() runs before wrap_model()"
        lora = callable(getattr(model, "get_base_model", None))
        lm = model.unload() if lora else model  # the loop's causal-LM adapter is untrained: drop it
        if self.config.layout == "shared_prefix":
            reason = layout_support(lm, self.pad_id)
            if reason:
                self._log(f"layout: shared_prefix is not exact for this model ({reason}); using padded rows")
            self.layout = "padded" if reason else "shared_prefix"
        classifier = sequence_classifier(lm, self.pad_id)
        if not lora:
            return classifier.requires_grad_(True)
        from peft import LoraConfig, get_peft_model

        cfg = self.config.lora
        present = {name.rsplit(".", 1)[-1] for name, _ in classifier.named_modules()}
        targets = [t for t in cfg.target_modules if t in present]
        peft_config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                                 task_type="SEQ_CLS", modules_to_save=["score"])
        return get_peft_model(classifier, peft_config)

    def export(self, model: nn.Module, final_dir: Path) -> nn.Module:
        """Full weights always (``from_pretrained`` of an adapter would pair it with the causal LM's config):
        the loop merges when ``lora.merge_on_save``; otherwise a merged copy is returned."""
        lora = self.config.lora
        if callable(getattr(model, "merge_and_unload", None)) and not (lora.enabled and lora.merge_on_save):
            return copy.deepcopy(model).merge_and_unload()
        return model

    # ------------------------------------------------------------ loss

    def rewards(self, ctx: BatchContext, items: list, indices: list[int]) -> tuple[torch.Tensor, int]:
        """[2B] rewards, chosen then rejected, from one forward; and the tokens fed."""
        assert self.pad_id is not None
        rows = [score_rows(items[i].prompt, items[i].chosen, items[i].rejected, self.pad_id) for i in indices]
        decoder, head = score_module(ctx.model)  # the decoder runs the layout (the classifier pools the padded way)
        laid_out = pair_batch(rows, ctx.pad_id, self.layout, pack=self.config.packing,
                              row_tokens=packing_capacity(decoder, self.config.pack_row_tokens), device=ctx.device)
        hidden = hidden_at(decoder, laid_out.batch, last_token_positions(laid_out.batch), ctx.autocast_dtype)
        # the head in its own dtype (the hidden states are bf16 under autocast)
        rewards = head(hidden.to(next(head.parameters()).dtype)).squeeze(-1).float()
        if laid_out.order is not None:
            rewards = rewards[laid_out.order]
        return rewards, laid_out.num_tokens

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        rewards, num_tokens = self.rewards(ctx, items, indices)
        n = len(indices)
        margin = None
        if items[indices[0]].margin is not None:
            margin = torch.tensor([items[i].margin for i in indices], device=rewards.device)
        out = bradley_terry_loss(rewards[:n], rewards[n:], margin, self.center)
        loss = self.weight * out.loss.mean()
        metrics = {key: float(value) for key, value in out.metrics.items()}
        metrics["loss"] = loss.item()
        return StepOutput(loss, metrics, num_tokens)


def _margin(value, key: str) -> float:
    try:
        margin = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"bradley_terry: margin {key!r} must be a number, got {value!r}") from None
    if margin != margin or margin in (float("inf"), float("-inf")):
        raise ValueError(f"bradley_terry: margin {key!r} must be finite, got {value!r}")
    return margin
