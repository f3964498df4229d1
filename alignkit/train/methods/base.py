"""A training method: how a run's data becomes a loss, batch by batch.

The loop (``alignkit.train.loop``) owns optimisation, checkpoints, logging and evaluation scheduling; a
method owns what differs between algorithms: which data it reads, which log-probs it needs, and how the
objective functions combine them. Offline preference objectives (DPO family, KTO, BCO) share one method;
methods such as CUT or online IPO register their own under their objective name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import Tensor, nn

from alignkit.objectives.params import Params, UncheckedParams, register_params, validate_params
from alignkit.train.config import TrainConfig

Rows = list[tuple[list[int], list[int]]]
P = TypeVar("P", bound=Params)


@dataclass
class BatchContext:
    """What a method needs to compute log-probs; built once by the loop."""

    model: nn.Module
    reference: Any | None  # FrozenCopyReference | AdapterDisabledReference | None
    pad_id: int
    chunk_size: int
    autocast_dtype: torch.dtype | None
    device: torch.device
    tokenizer: Any = None


@dataclass
class StepOutput:
    loss: Tensor  # scalar, differentiable
    metrics: dict[str, float]
    num_tokens: int  # tokens fed to the model (throughput)


class Method(ABC):
    """One algorithm's data handling and loss; see module docstring."""

    needs_reference: bool = True
    precomputable_reference: bool = True  # reference log-probs depend only on the data rows

    def __init__(self, config: TrainConfig):
        self.config = config

    @abstractmethod
    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        """Encoded (train, eval) examples."""

    @abstractmethod
    def reference_rows(self, items: list) -> Rows:
        """Rows whose reference log-probs ``step`` looks up by position when the reference is precomputed."""

    @abstractmethod
    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        """Loss and metrics for the examples ``indices`` of ``items``."""

    @property
    def score_prompt(self) -> bool:
        return False

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module to train, given the policy once LoRA and the reference are set up and before the optimizer
        is built or a checkpoint restored; a method may add trainable modules around it (MAH-DPO's heads)."""
        return model

    def export(self, model: nn.Module, final_dir: Path) -> nn.Module:
        """Write the method's own files of the final model into ``final_dir`` and return the module whose
        ``save_pretrained`` writes the rest: the plain LM again when ``wrap_model`` wrapped it."""
        return model

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        """Example-weighted mean of step metrics over ``items`` (no gradients, eval mode)."""
        sums, count = self.evaluate_sums(ctx, items, batch_size, precomputed, state)
        return {key: value / max(count, 1) for key, value in sums.items()}

    def evaluate_sums(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict,
                      rank: int = 0, world: int = 1) -> tuple[dict[str, float], int]:
        """Example-weighted metric sums and the example count over this process's share of the eval batches
        (batch k goes to process k mod ``world``), so several processes split an eval and add up."""
        was_training = ctx.model.training
        ctx.model.eval()
        sums: dict[str, float] = {}
        count = 0
        with torch.no_grad():
            for k, start in enumerate(range(0, len(items), batch_size)):
                indices = list(range(start, min(start + batch_size, len(items))))
                if k % world != rank or (len(indices) < 2 and start):  # a lone trailing example breaks
                    continue                                             # in-batch statistics
                out = self.step(ctx, items, indices, precomputed, state, training=False)
                for key, value in out.metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * len(indices)
                count += len(indices)
        ctx.model.train(was_training)
        return sums, count


METHODS: dict[str, type[Method]] = {}


def register_method(*objective_names: str, params: type[Params] | dict[str, type[Params]] = UncheckedParams):
    """Register a method class for ``objective_names``, with its typed parameters (one model for all names,
    or one per name)."""

    def wrap(cls: type[Method]) -> type[Method]:
        for name in objective_names:
            METHODS[name] = cls
            register_params(name, params[name] if isinstance(params, dict) else params)
        return cls

    return wrap


def method_params(config: TrainConfig, kind: type[P]) -> P:
    """The validated parameters of a method that runs alone: its one ``objectives`` entry checked against the
    model registered for its name (the check ``load_config`` already ran), defaults filled in."""
    names = [o.name for o in config.objectives]
    if len(names) != 1:
        raise ValueError(f"objective {names[0]!r} runs alone; got objectives {names}")
    params = validate_params(names[0], config.objectives[0].raw_params, where="objectives.0")
    if not isinstance(params, kind):
        raise TypeError(f"{names[0]}: parameters are {type(params).__name__}, expected {kind.__name__}")
    return params


def params_error(field: str, message: str, value: Any) -> ValidationError:
    """A parameter error located at ``field``, for a :class:`Params` model validator to raise when a check
    spans several fields; config loading prints it as one line, ``<objective>: <field>: <message> (got ...)``."""
    error = PydanticCustomError("invalid_parameter", message)
    return ValidationError.from_exception_data("params", [InitErrorDetails(type=error, loc=(field,), input=value)])
