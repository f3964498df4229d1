"""DOVE: preference optimisation over (instruction, response) pairs with different instructions.

Paper: Bansal, Suvarna, Bhatt, Peng, Chang and Grover, "Comparing Bad Apples to Good Oranges: Aligning Large
Language Models via Joint Preference Optimization", Findings of ACL 2025, arXiv 2404.00530 (code
``Hritikbansal/dove``).

Data are joint pairs ``(I_w, R_w) ≻ (I_l, R_l)`` (:class:`alignkit.data.records.JointPair`); ordinary
pairs are the conditional special case I_w = I_l, and the paper trains on the union of both. The loss is DPO
on the *joint* log-probability of the rendered prompt (template, BOS and instruction) plus the response::

    log π(I, R) = Σ_{tokens of [template + I + R]} log π(token | prefix)      (the very first token excluded)
    L = −log σ(β [(log π_θ(I_w,R_w) − log π_ref(I_w,R_w)) − (log π_θ(I_l,R_l) − log π_ref(I_l,R_l))])

For a conditional pair the prompt terms cancel and this is DPO. Each side is truncated on its own, so prompt
truncation changes the loss; a conditional pair keeps one shared prompt so the cancellation stays exact.
Any registered pair objective can replace DPO (``loss: ipo``...), applied to the joint log-probs; the other
keys are that objective's parameters, checked against its parameter model when the config loads. Defaults:
``loss`` dpo (β = 0.1), ``conditional_fraction`` 0.5. Pairs are scored by :mod:`alignkit.engine.pairs`, in the
shared-prefix layout when it is exact for the model (a conditional pair writes its prompt once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from alignkit.data.readers import load_joint_pairs
from alignkit.data.records import JointPair
from alignkit.data.synthetic import make_joint_pairs
from alignkit.data.tokenize import PromptEncoder, encode_example, encode_pair
from alignkit.engine.pairs import PairRows
from alignkit.objectives import OBJECTIVES, PairLogps, get_objective
from alignkit.objectives.base import ObjectiveSpec
from alignkit.objectives.params import Params, accepted, params_dict
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, prompt_encoder, read_splits, rejected_rows_path
from alignkit.train.methods.base import BatchContext, StepOutput, method_params, register_method
from alignkit.train.methods.preference import PreferenceMethod, combine_objectives


class DoveParams(Params):
    """DOVE's own keys; every other key is a parameter of the pair objective ``loss``, validated against
    that objective's parameter model."""

    model_config = ConfigDict(extra="allow", frozen=True)
    loss: str = Field("dpo", description="the pair objective applied to the joint log-probs; its parameters (e.g. "
                                          "beta) sit next to this key")
    conditional_fraction: float = Field(0.5, ge=0, le=1, description="synthetic data only: the share of pairs "
                                                                     "kept conditional (one prompt)")

    @field_validator("loss")
    @classmethod
    def _pair_objective(cls, name: str) -> str:
        spec = OBJECTIVES.get(name)
        pair = sorted(n for n, s in OBJECTIVES.items() if s.inputs == "pair")
        if spec is None or spec.inputs != "pair":
            problem = "unknown objective" if spec is None else "takes unpaired inputs"
            raise PydanticCustomError("invalid_parameter", f"{problem}; choose a pair objective: {', '.join(pair)}")
        return name

    @model_validator(mode="after")
    def _loss_parameters(self) -> DoveParams:
        inner = OBJECTIVES[self.loss].params
        try:
            inner.model_validate(self.model_extra or {})
        except ValidationError as error:
            details = []
            for e in error.errors():
                if e["type"] == "extra_forbidden":  # say which objectives were asked, and what they take
                    message = (f"not a parameter of dove or of its loss {self.loss} (which takes "
                               f"{accepted(inner)})")
                    details.append(InitErrorDetails(type=PydanticCustomError("invalid_parameter", message),
                                                    loc=e["loc"], input=e["input"]))
                else:
                    details.append(InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"],
                                                    ctx=e.get("ctx", {})))
            raise ValidationError.from_exception_data("dove", details) from None
        return self

    def loss_params(self) -> dict:
        """The loss objective's validated keyword arguments, defaults filled in."""
        return params_dict(self.loss, self.model_extra or {})


@dataclass
class EncodedJointPair:
    prompt_chosen: list[int]
    chosen: list[int]
    prompt_rejected: list[int]
    rejected: list[int]
    joint: bool
    prompt_truncated: bool = False
    response_truncated: bool = False


def encode_joint_pair(encoder: PromptEncoder, pair: JointPair, max_length: int, max_prompt_length: int
                      ) -> EncodedJointPair:
    if not pair.joint:
        e = encode_pair(encoder, pair.prompt_chosen, pair.chosen, pair.rejected, pair.system, max_length,
                        max_prompt_length)
        return EncodedJointPair(e.prompt, e.chosen, e.prompt, e.rejected, False, e.prompt_truncated,
                                e.response_truncated)
    w = encode_example(encoder, pair.prompt_chosen, pair.chosen, pair.system, max_length, max_prompt_length)
    loser = encode_example(encoder, pair.prompt_rejected, pair.rejected, pair.system, max_length, max_prompt_length)
    return EncodedJointPair(w.prompt, w.response, loser.prompt, loser.response, True,
                            w.prompt_truncated or loser.prompt_truncated,
                            w.response_truncated or loser.response_truncated)


def cat_pair_logps(parts: list[PairLogps]) -> PairLogps:
    fields = PairLogps.__dataclass_fields__
    return PairLogps(**{name: None if getattr(parts[0], name) is None else
                        torch.cat([getattr(p, name) for p in parts]) for name in fields})


@register_method("dove", params=DoveParams)
class DoveMethod(PreferenceMethod):
    """Parameters: :class:`DoveParams`, e.g. ``objectives: [{name: dove, beta: 0.1}]``. Data: ``data.train`` is
    ``synthetic`` or a joint-pair file (see :func:`alignkit.data.readers.load_joint_pairs`). Scoring,
    layout choice and reference rows are :class:`PreferenceMethod`'s, on :meth:`pair_rows` with two prompts."""

    def __init__(self, config: TrainConfig):
        self.params = method_params(config, DoveParams)
        self.conditional_fraction = self.params.conditional_fraction
        super().__init__(config)
        if getattr(config, "max_tokens_per_batch", None):  # the token budget counts one shared prompt per pair
            raise ValueError("dove: max_tokens_per_batch is not supported (two prompts per pair); use batch_size")

    def objective_terms(self) -> list[tuple[ObjectiveSpec, float, dict]]:
        return [(get_objective(self.params.loss), self.config.objectives[0].weight, self.params.loss_params())]

    @property
    def score_prompt(self) -> bool:
        return True

    def pair_rows(self, item: EncodedJointPair) -> PairRows:
        """A conditional pair shares its prompt (written once in the shared-prefix layout); a joint pair has two."""
        second = None if item.prompt_rejected == item.prompt_chosen else item.prompt_rejected
        return PairRows(item.prompt_chosen, item.chosen, item.rejected, prompt_rejected=second)

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        self._log = log
        data = self.config.data

        def from_synthetic(pairs: list) -> list[JointPair]:
            return make_joint_pairs(pairs, data.synthetic.seed, self.conditional_fraction)

        def read(source: str) -> list[JointPair]:
            return load_joint_pairs(source, column_map=data.column_map, on_invalid=data.on_invalid,
                                    rejected_rows_path=rejected_rows_path(run_dir, self.config, source), log=log)

        train, evaluation = read_splits(self.config, from_synthetic, read)
        encoder = prompt_encoder(tokenizer, self.config)
        encoded = encode_splits((train, evaluation),
                                lambda p: encode_joint_pair(encoder, p, data.max_length, data.max_prompt_length),
                                data.max_length, log)
        n_joint = sum(item.joint for item in encoded[0])
        log(f"data: {len(train)} train ({n_joint} joint, {len(train) - n_joint} conditional) and "
            f"{len(evaluation)} eval joint pairs")
        return encoded[0], encoded[1]

    def joint_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                    ) -> tuple[PairLogps, int]:
        """Joint log-probs of both sides (prompt tokens scored): :meth:`PreferenceMethod.pair_logps`."""
        return self.pair_logps(ctx, items, indices, precomputed)

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        out = super().step(ctx, items, indices, precomputed, state, training)
        out.metrics["joint_fraction"] = sum(items[i].joint for i in indices) / len(indices)
        return out

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        """Metrics over the whole eval set at once, plus the accuracy on joint and on conditional pairs."""
        was_training = ctx.model.training
        ctx.model.eval()
        with torch.no_grad():
            parts = [self.joint_logps(ctx, items, list(range(s, min(s + batch_size, len(items)))), precomputed)[0]
                     for s in range(0, len(items), batch_size)]
        ctx.model.train(was_training)
        logps = cat_pair_logps(parts)
        _, metrics = combine_objectives(self.objectives, logps, state, training=False)
        joint = torch.tensor([item.joint for item in items], device=logps.chosen.device)
        metrics["joint_fraction"] = joint.float().mean().item()
        # implicit-reward ranking when there is a reference, else the joint-likelihood ranking
        if logps.ref_chosen is not None:
            correct = (logps.chosen - logps.ref_chosen) > (logps.rejected - logps.ref_rejected)
        else:
            correct = logps.chosen > logps.rejected
        for name, mask in (("joint", joint), ("conditional", ~joint)):
            if mask.any():
                metrics[f"accuracy/{name}"] = correct[mask].float().mean().item()
        return metrics
