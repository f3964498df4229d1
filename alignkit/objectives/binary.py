"""Binary-feedback objectives: KTO and BCO, plus BCO's paired form.

Papers: KTO (Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela, "KTO: Model Alignment as Prospect Theoretic
Optimization", ICML 2024, arXiv 2402.01306); BCO (Jung, Han, Nam, On, "Binary Classifier Optimization for
Large Language Model Alignment", ACL 2025, arXiv 2404.04656). Each function's docstring states its formula
and defaults; each has a :class:`Params` model with the same keyword parameters, checked when a config loads.

KTO/BCO take :class:`UnpairedLogps` (one thumbs-up/down label per example, log-probs summed over response
tokens). Losses are per example in input order; the loop's mean over B equals TRL's ``nanmean`` over
its concatenated [desirable, undesirable] losses. Batch statistics (KTO's z0, BCO's δ) are computed from
the tensors passed in: on several ranks the loop must pass gathered tensors or ranks will disagree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from alignkit.objectives.base import (
    ObjectiveOutput,
    PairLogps,
    UnpairedLogps,
    mean,
    register,
    require_reference,
)
from alignkit.objectives.params import Params
from alignkit.objectives.preference import log_ratios, logits_metric, pair_metrics


def _class_metrics(logps: UnpairedLogps, rewards: Tensor) -> dict[str, Tensor]:
    """TRL's KTO/BCO metrics: per-class means, omitted (as in TRL) when a class is absent from the batch."""
    label = logps.label.bool()
    metrics = {"count/chosen": label.sum().float(), "count/rejected": (~label).sum().float()}
    for name, mask in (("chosen", label), ("rejected", ~label)):
        if mask.any():
            metrics[f"rewards/{name}"] = mean(rewards.detach()[mask])
            metrics[f"logps/{name}"] = mean(logps.policy.detach()[mask])
            if logps.logits_mean is not None:
                metrics.update(logits_metric(logps.logits_mean[mask], logps.tokens[mask], f"logits/{name}"))
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics


class KTOParams(Params):
    """Parameters of :func:`kto`."""

    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (paper and TRL: 0.1)")
    desirable_weight: float = Field(1.0, ge=0, description="λ_D, loss weight of desirable examples (TRL: 1.0)")
    undesirable_weight: float = Field(1.0, ge=0, description="λ_U, loss weight of undesirable examples (TRL: 1.0)")


@register("kto", inputs="unpaired", params=KTOParams)
def kto(logps: UnpairedLogps, *, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> ObjectiveOutput:
    """KTO (Ethayarajh et al., ICML 2024, arXiv 2402.01306), TRL ``KTOTrainer(loss_type="kto")``.

    ``r = log π_θ(y|x) - log π_ref(y|x)`` (summed), ``z0 = clamp_min(mean(kl_policy - kl_ref), 0).detach()``
    where ``kl_*`` are log-probs of mismatched (prompt_i, completion_{i+1}) pairs from the same batch.
    Desirable: ``λ_D·(1 - σ(β(r - z0)))``; undesirable: ``λ_U·(1 - σ(β(z0 - r)))``.
    Defaults: β = 0.1, λ_D = λ_U = 1.0 (TRL). With imbalanced classes keep λ_D·n_D/(λ_U·n_U) in [1, 4/3].
    Metrics: ``kl`` (z0), per-class rewards/logps/logits, ``rewards/margins``, ``count/*``.
    """
    require_reference(logps, "kto")
    if logps.kl_policy is None or logps.kl_ref is None:
        raise ValueError("objective 'kto' needs kl_policy and kl_ref (log-probs of mismatched completions)")
    assert logps.ref is not None
    label = logps.label.bool()
    r = logps.policy.float() - logps.ref.float()
    z0 = (logps.kl_policy.float() - logps.kl_ref.float()).mean().clamp(min=0).detach()
    # 1 - σ(x) written as σ(-x): same value, but keeps full precision when σ(x) is close to 1.
    loss = torch.where(label,
                       desirable_weight * torch.sigmoid(-beta * (r - z0)),
                       undesirable_weight * torch.sigmoid(-beta * (z0 - r)))
    metrics = _class_metrics(logps, beta * r)
    metrics["kl"] = z0
    return ObjectiveOutput(loss, metrics)


def _running_delta(state: dict[str, float], rewards: Tensor, training: bool) -> float:
    """BCO's reward shift δ: cumulative mean of every reward seen in training (RunningMoments, not EMA).

    Stored as plain floats so the loop can checkpoint ``state`` as JSON. As in TRL, the current batch is
    folded in *before* δ is used for its loss; evaluation reads δ without updating it.
    """
    delta = float(state.setdefault("delta_mean", 0.0))
    count = float(state.setdefault("delta_count", 0.0))
    n = rewards.numel()
    if training and n:
        total = count + n
        delta += (float(rewards.detach().double().mean()) - delta) * n / total
        state["delta_mean"], state["delta_count"] = delta, total
    return delta


class BCOParams(Params):
    """Parameters of :func:`bco` (``weights`` is a per-batch tensor, given only through the Python API)."""

    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (TRL: 0.1)")
    min_density_ratio: float = Field(0.5, ge=0, description="lower clamp of the UDM density-ratio weights (TRL: 0.5)")
    max_density_ratio: float = Field(10.0, gt=0, description="upper clamp of the UDM density-ratio weights (TRL: 10)")

    @field_validator("max_density_ratio")
    @classmethod
    def _at_least_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min_density_ratio")
        if low is not None and value < low:
            raise ValueError(f"must be >= min_density_ratio ({low})")
        return value


@register("bco", inputs="unpaired", stateful=True, params=BCOParams)
def bco(logps: UnpairedLogps, *, state: dict[str, float], beta: float = 0.1, training: bool = True,
        weights: Tensor | None = None, min_density_ratio: float = 0.5,
        max_density_ratio: float = 10.0) -> ObjectiveOutput:
    """BCO (Jung et al., ACL 2025, arXiv 2404.04656), TRL's ``BCOTrainer.bco_loss`` (not in trl 1.16).

    ``r = β·(log π_θ - log π_ref)`` (summed); δ = running mean of all rewards (see ``_running_delta``).
    Desirable: ``-log σ(r - δ)``; undesirable: ``-w·log σ(-(r - δ))``. ``weights`` are the
    underlying-distribution-matching density ratios ``p/(1-p)``, ``p = P(desirable | prompt embedding)``
    from a classifier the caller fits (Python API only: a config cannot pass a tensor); they are clamped
    to [min_density_ratio, max_density_ratio] and apply to undesirable examples only (desirable weight 1).
    ``state`` is owned and checkpointed by the loop; ``training=False`` leaves δ unchanged.
    Defaults: β = 0.1, ratios clamped to [0.5, 10] (TRL).
    """
    require_reference(logps, "bco")
    assert logps.ref is not None
    label = logps.label.bool()
    rewards = beta * (logps.policy.float() - logps.ref.float())
    delta = _running_delta(state, rewards, training)
    shifted = rewards - delta
    undesirable = -F.logsigmoid(-shifted)
    metrics = _class_metrics(logps, rewards)
    if weights is not None:
        w = weights.detach().float().clamp(min=min_density_ratio, max=max_density_ratio)
        undesirable = w * undesirable
        metrics["udm_weight/mean"] = mean(w[~label])
    loss = torch.where(label, -F.logsigmoid(shifted), undesirable)
    metrics["delta"] = torch.tensor(delta)
    return ObjectiveOutput(loss, metrics)


class BCOPairParams(Params):
    """Parameters of :func:`bco_pair`."""

    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (TRL: 0.1)")
    use_running_delta: bool = Field(True, description="shift rewards by their running mean δ (False: δ = 0, TRL 1.16)")


@register("bco_pair", stateful=True, params=BCOPairParams)
def bco_pair(logps: PairLogps, *, state: dict[str, float], beta: float = 0.1, training: bool = True,
             use_running_delta: bool = True) -> ObjectiveOutput:
    """Paired BCO (Jung et al., ACL 2025, arXiv 2404.04656), TRL ``DPOTrainer(loss_type="bco_pair")``.

    ``L = -log σ(r_w - δ) - log σ(-(r_l - δ))`` with ``r = β·h`` on summed log-ratios and δ the running
    mean of all chosen and rejected rewards (the paper's reward shift; older TRL).
    ``use_running_delta=False`` fixes δ = 0, which is exactly TRL 1.16's bco_pair (it dropped the running
    shift). Older TRL folded in each batch's *mean* reward with weight 1 and also updated during evaluation;
    alignkit weighs every reward (same δ for equal batch sizes) and updates only when ``training``.
    Defaults: β = 0.1, running δ on.
    """
    require_reference(logps, "bco_pair")
    hw, hl = log_ratios(logps)
    rw, rl = beta * hw, beta * hl
    delta = _running_delta(state, torch.cat([rw, rl]), training) if use_running_delta else 0.0
    loss = -F.logsigmoid(rw - delta) - F.logsigmoid(-(rl - delta))
    metrics = pair_metrics(logps, rw, rl)
    metrics["delta"] = torch.tensor(delta)
    return ObjectiveOutput(loss, metrics)
