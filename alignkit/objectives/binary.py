"""Binary-feedback objectives: KTO and BCO, plus BCO's paired form.

Papers: KTO (Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela, "KTO: Model Alignment as Prospect Theoretic
Optimization", ICML 2024, arXiv 2402.01306); BCO (Jung, Han, Nam, On, "Binary Classifier Optimization for
Large Language Model Alignment", ACL 2025, arXiv 2404.04656). Each function's docstring states its formula
and defaults; each has a :class:`Params` model with the same keyword parameters, checked when a config loads.

KTO/BCO take :class:`UnpairedLogps` (one thumbs-up/down label per example, log-probs summed over response
tokens). Losses are per example in input order; the loop's mean over B equals TRL's ``nanmean`` over
its concatenated [desirable, undesirable] losses. Batch statistics (KTO's z0, BCO's δ) are computed from
the tensors passed in: on several ranks the loop must pass gathered tensors or ranks will disagree.

BCO's underlying distribution matching (UDM) needs a prompt classifier: :func:`fit_udm_classifier` (a
class-balanced, L2-penalised logistic regression on prompt embeddings, fitted in torch) and
:func:`udm_density_ratio` give the per-example weights :func:`bco` takes; the preference method computes the
embeddings and supplies the weights when a config sets ``udm: true``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    where ``kl_*`` are log-probs of mismatched pairs: example i's prompt with the completion of an example
    whose prompt differs (TRL cycles completions within the batch; the preference method picks partners by a
    seeded derangement over prompt groups, so no partner shares the example's prompt).
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
    """Parameters of :func:`bco` (``weights`` is a per-batch tensor, supplied by the method when ``udm``)."""

    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (TRL: 0.1)")
    udm: bool = Field(False, description="underlying distribution matching: weight undesirable examples by a "
                                         "prompt classifier's density ratio (paper's UDM; off as in TRL)")
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
        weights: Tensor | None = None, udm: bool = False, min_density_ratio: float = 0.5,
        max_density_ratio: float = 10.0) -> ObjectiveOutput:
    """BCO (Jung et al., ACL 2025, arXiv 2404.04656), TRL's ``BCOTrainer.bco_loss`` (not in trl 1.16).

    ``r = β·(log π_θ - log π_ref)`` (summed); δ = running mean of all rewards (see ``_running_delta``).
    Desirable: ``-log σ(r - δ)``; undesirable: ``-w·log σ(-(r - δ))``.

    **Underlying distribution matching** (``udm``, for desirable and undesirable prompts drawn from different
    distributions): ``weights`` are density ratios ``p/(1-p)``, ``p = P(desirable | prompt embedding)`` from a
    class-balanced logistic-regression classifier (:func:`fit_udm_classifier`, :func:`udm_density_ratio`); they
    are clamped per example to [min_density_ratio, max_density_ratio] and apply to undesirable examples only
    (desirable weight 1), as in TRL. In training, the preference method fits the classifier once on the frozen
    starting model's prompt embeddings and supplies ``weights`` when ``udm=True``; ``udm=True`` without
    ``weights`` is an error. From Python, ``weights`` may also be passed directly.
    ``state`` is owned and checkpointed by the loop; ``training=False`` leaves δ unchanged.
    Defaults: β = 0.1, UDM off, ratios clamped to [0.5, 10] (TRL).
    Metrics: ``delta``, per-class rewards/logps/logits, ``rewards/margins``, ``count/*``, and with weights
    ``udm_weight/mean`` (mean clamped weight of the undesirable examples).
    """
    require_reference(logps, "bco")
    if udm and weights is None:
        raise ValueError("objective 'bco' with udm=True needs per-example density-ratio weights (the preference "
                         "method supplies them; from Python pass weights=udm_density_ratio(...))")
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


# -------------------------------------------------------------------------------- UDM prompt classifier


@dataclass(frozen=True)
class UDMClassifier:
    """P(desirable | prompt embedding): logistic regression on standardised embeddings."""

    centre: Tensor  # [D] feature means of the fit sample
    scale: Tensor  # [D] feature standard deviations (1 where constant)
    coef: Tensor  # [D]
    bias: Tensor  # []
    accuracy_desirable: float  # training accuracy per class (TRL logs these two scores)
    accuracy_undesirable: float

    @property
    def accuracy(self) -> float:
        """Balanced training accuracy: the mean of the two per-class accuracies."""
        return (self.accuracy_desirable + self.accuracy_undesirable) / 2

    def prob_desirable(self, embeddings: Tensor) -> Tensor:
        x = (embeddings.double().cpu() - self.centre) / self.scale
        return torch.sigmoid(x @ self.coef + self.bias).float()


def fit_udm_classifier(desirable: Tensor, undesirable: Tensor, c: float = 1.0, max_iter: int = 500
                       ) -> UDMClassifier:
    """Fit BCO's UDM classifier on prompt embeddings [n_d, D] (label 1) and [n_u, D] (label 0).

    The objective of scikit-learn's ``LogisticRegression(class_weight="balanced")`` with its default C = 1,
    which TRL's BCOTrainer uses: ``0.5·‖w‖² + C·Σ_i s_i·logloss_i`` with ``s_i = n / (2·n_class(i))`` and an
    unpenalised intercept, minimised by L-BFGS in float64. Features are standardised with the fit sample's
    mean and standard deviation first (hidden states have a few huge dimensions; the penalty then treats all
    dimensions alike), so the solution differs from scikit-learn's on raw features by that rescaling.
    """
    if desirable.shape[0] == 0 or undesirable.shape[0] == 0:
        raise ValueError("the UDM classifier needs prompts of both classes (desirable and undesirable)")
    x = torch.cat([desirable, undesirable]).double().cpu()
    y = torch.cat([torch.ones(desirable.shape[0]), torch.zeros(undesirable.shape[0])]).double()
    n, n_d, n_u = x.shape[0], desirable.shape[0], undesirable.shape[0]
    sample_weight = torch.where(y > 0, n / (2 * n_d), n / (2 * n_u)).double()
    centre = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    xs = (x - centre) / scale
    coef = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([coef, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        logloss = F.binary_cross_entropy_with_logits(xs @ coef + bias, y, reduction="none")
        objective = 0.5 * coef.pow(2).sum() + c * (sample_weight * logloss).sum()
        objective.backward()
        return objective

    with torch.enable_grad():
        optimizer.step(closure)
    coef, bias = coef.detach(), bias.detach()
    predicted = (xs @ coef + bias) > 0
    return UDMClassifier(centre, scale, coef, bias,
                         accuracy_desirable=float(predicted[:n_d].double().mean()),
                         accuracy_undesirable=float((~predicted[n_d:]).double().mean()))


def udm_density_ratio(prob_desirable: Tensor) -> Tensor:
    """``p / (1 - p)`` with TRL's 1e-8 guard; :func:`bco` clamps it to [min_density_ratio, max_density_ratio]."""
    p = prob_desirable.float()
    return p / (1 - p + 1e-8)


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
