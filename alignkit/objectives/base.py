"""The contract between the log-prob engine and the objectives.

Objectives are pure functions: tensors of per-sequence log-probabilities in, a per-example loss and a
dict of scalar metrics out. They never see models, batches or loops. The training loop computes the
log-probs (``alignkit.engine.logprobs``), picks the inputs an objective asks for, and sums weighted losses.

Every log-prob here is a **sum over response tokens** (prompt masked); ``*_tokens`` holds the number of
response tokens so objectives that need per-token averages (IPO, SimPO, ORPO, SFT) divide themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from alignkit.objectives.params import Params, UncheckedParams, register_params


@dataclass
class PairLogps:
    """Log-probs for a batch of B preference pairs. All tensors have shape [B]."""

    chosen: Tensor  # policy, summed over response tokens
    rejected: Tensor
    chosen_tokens: Tensor  # response token counts (float)
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None  # reference model, same aggregation; None for reference-free runs
    ref_rejected: Tensor | None = None
    chosen_logits_mean: Tensor | None = None  # mean logit over response tokens (metrics only)
    rejected_logits_mean: Tensor | None = None


@dataclass
class UnpairedLogps:
    """Log-probs for B binary-feedback examples (KTO, BCO). Shapes [B]."""

    policy: Tensor
    tokens: Tensor
    label: Tensor  # bool, True = desirable
    ref: Tensor | None = None
    # KTO's KL estimate uses mismatched (prompt_i, completion_{i+1}) pairs from the same batch.
    kl_policy: Tensor | None = None
    kl_ref: Tensor | None = None
    logits_mean: Tensor | None = None


@dataclass
class ObjectiveOutput:
    loss: Tensor  # [B] per-example loss; the loop takes the mean
    metrics: dict[str, Tensor] = field(default_factory=dict)  # scalar tensors, TRL names where they exist


InputKind = Literal["pair", "unpaired"]


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[..., ObjectiveOutput]
    inputs: InputKind
    needs_reference: bool
    stateful: bool = False  # receives ``state=`` (a dict the loop owns and checkpoints), e.g. BCO's δ
    params: type[Params] = UncheckedParams  # typed parameters, validated when the config loads


OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register(name: str, inputs: InputKind = "pair", needs_reference: bool = True, stateful: bool = False,
             params: type[Params] = UncheckedParams):
    """Register an objective under ``name`` with its parameter model (keyword arguments of ``fn``)."""

    def wrap(fn: Callable[..., ObjectiveOutput]) -> Callable[..., ObjectiveOutput]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} registered twice")
        OBJECTIVES[name] = ObjectiveSpec(name, fn, inputs, needs_reference, stateful, params)
        register_params(name, params)
        return fn

    return wrap


def get_objective(name: str) -> ObjectiveSpec:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}") from None


def require_reference(logps: PairLogps | UnpairedLogps, name: str) -> None:
    missing = logps.ref_chosen is None if isinstance(logps, PairLogps) else logps.ref is None
    if missing:
        raise ValueError(f"objective {name!r} needs reference log-probs; set reference to 'copy', "
                         f"'adapter' or 'precomputed' in the config")


def mean(x: Tensor) -> Tensor:
    """Metric mean that stays finite on empty tensors."""
    return x.float().mean() if x.numel() else torch.zeros((), device=x.device)
