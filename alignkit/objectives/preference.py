"""Pairwise preference objectives of the DPO family, following TRL's conventions.

Papers: DPO (Rafailov et al., NeurIPS 2023, arXiv 2305.18290) and its conservative variant cDPO (Mitchell,
2023 note "A note on DPO with noisy preferences & relationship to IPO"); robust DPO (Chowdhury et al.,
ICML 2024, arXiv 2403.00409); IPO (Azar et al., AISTATS 2024, arXiv 2310.12036); the RSO hinge (Liu et al.,
ICLR 2024, arXiv 2309.06657); SLiC-HF (Zhao et al., 2023, arXiv 2305.10425); RPO (Liu et al., NeurIPS 2024,
arXiv 2405.16436); ORPO (Hong et al., EMNLP 2024, arXiv 2403.07691); SimPO (Meng et al., NeurIPS 2024,
arXiv 2405.14734). Each function's docstring states its formula and defaults; each has a :class:`Params`
model with the same keyword parameters, defaults and allowed ranges, checked when a config loads.

Every function takes a :class:`PairLogps` whose log-probs are *summed* over response tokens and returns
a per-example loss [B] plus scalar metrics. Objectives that need per-token averages (IPO, ORPO, SimPO and
the NLL terms) divide by the token counts themselves. Loss math runs in fp32 because bf16 sums of
hundreds of token log-probs lose the digits that a margin of a few nats depends on.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, PairLogps, mean, register, require_reference
from alignkit.objectives.params import Params

# ORPO needs log(1 - p) of the mean token probability; at p == 1 that is -inf and torch.where in log1mexp
# turns the unused branch's infinite gradient into NaN. Capping the mean log-prob just below 0 keeps
# both branches finite and only affects a model that is already certain of every token.
_ORPO_MAX_MEAN_LOGP = -1e-6


# ---------------------------------------------------------------------------------------------- helpers


def token_mean(logps: Tensor, tokens: Tensor) -> Tensor:
    """Per-example mean log-prob per response token. Empty responses count as one token, as in TRL."""
    return logps.float() / tokens.float().clamp(min=1.0)


def log_ratios(logps: PairLogps) -> tuple[Tensor, Tensor]:
    """h(y_w), h(y_l): policy minus reference summed log-probs."""
    assert logps.ref_chosen is not None and logps.ref_rejected is not None
    return (logps.chosen.float() - logps.ref_chosen.float(),
            logps.rejected.float() - logps.ref_rejected.float())


def logits_metric(logits_mean: Tensor | None, tokens: Tensor, name: str) -> dict[str, Tensor]:
    """Mean logit over all response tokens in the batch.

    TRL averages over tokens, not examples, so longer responses weigh more; weighting the per-example
    means by their token counts reproduces that exactly.
    """
    if logits_mean is None or logits_mean.numel() == 0:
        return {}
    n = tokens.detach().float()
    return {name: (logits_mean.detach().float() * n).sum() / n.sum().clamp(min=1.0)}


def pair_metrics(
    logps: PairLogps,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    chosen_logps: Tensor | None = None,
    rejected_logps: Tensor | None = None,
) -> dict[str, Tensor]:
    """TRL's shared DPO/CPO/ORPO metrics. ``*_logps`` default to the raw summed policy log-probs."""
    cr, rr = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    cl = logps.chosen if chosen_logps is None else chosen_logps
    rl = logps.rejected if rejected_logps is None else rejected_logps
    return {
        "rewards/chosen": mean(cr),
        "rewards/rejected": mean(rr),
        "rewards/margins": mean(cr - rr),
        "rewards/accuracies": mean((cr > rr).float()),
        "logps/chosen": mean(cl.detach()),
        "logps/rejected": mean(rl.detach()),
        **logits_metric(logps.chosen_logits_mean, logps.chosen_tokens, "logits/chosen"),
        **logits_metric(logps.rejected_logits_mean, logps.rejected_tokens, "logits/rejected"),
    }


def _check_smoothing(label_smoothing: float, name: str, half_open: bool = False) -> None:
    # robust_dpo divides by 1 - 2ε, so ε = 0.5 is excluded there; cDPO at ε = 0.5 is merely uninformative.
    ok = 0.0 <= label_smoothing < 0.5 if half_open else 0.0 <= label_smoothing <= 0.5
    if not ok:
        bound = "0.5)" if half_open else "0.5]"
        raise ValueError(f"{name}: label_smoothing must be in [0, {bound}, got {label_smoothing}")


def _conservative_sigmoid(z: Tensor, label_smoothing: float) -> Tensor:
    """cDPO: the logistic loss against a label that is flipped with probability ``label_smoothing``."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


# ------------------------------------------------------------------------------------------- objectives


class DPOParams(Params):
    """Parameters of :func:`dpo`."""

    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (paper and TRL: 0.1)")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="cDPO: assumed label-flip rate ε (0 = DPO)")


@register("dpo", params=DPOParams)
def dpo(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """DPO (Rafailov et al., NeurIPS 2023, arXiv 2305.18290), with cDPO (Mitchell, 2023) via label smoothing.

    ``L = -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ)``, ``Δ = h(y_w) - h(y_l)``, ``h = log π_θ - log π_ref``
    on summed log-probs. ε = 0 is plain DPO and equals TRL 1.16 ``DPOTrainer(loss_type="sigmoid")``;
    ε > 0 is the cDPO form of older TRL "sigmoid" and of TRL's CPOTrainer "sigmoid" loss (TRL 1.16's
    DPOTrainer no longer smooths its sigmoid loss). Defaults: β = 0.1 (paper and TRL), ε = 0.
    """
    require_reference(logps, "dpo")
    _check_smoothing(label_smoothing, "dpo")
    hw, hl = log_ratios(logps)
    loss = _conservative_sigmoid(beta * (hw - hl), label_smoothing)
    return ObjectiveOutput(loss, pair_metrics(logps, beta * hw, beta * hl))


class RobustDPOParams(Params):
    """Parameters of :func:`robust_dpo`."""

    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward (TRL: 0.1)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5,
                                   description="assumed label-flip rate ε; the loss divides by 1 - 2ε")


@register("robust_dpo", params=RobustDPOParams)
def robust_dpo(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> ObjectiveOutput:
    """Robust DPO (Chowdhury, Kini, Natarajan, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback", ICML 2024, arXiv 2403.00409), TRL ``loss_type="robust"``.

    ``L = [-(1-ε)·log σ(β·Δ) + ε·log σ(-β·Δ)] / (1 - 2ε)``: an unbiased estimate of the clean-label DPO
    loss when each preference label is flipped with probability ε. ε = 0 reduces to DPO, so set
    ``label_smoothing`` to the assumed noise rate; it must lie in [0, 0.5). Defaults: β = 0.1, ε = 0.0
    (TRL's defaults).
    """
    require_reference(logps, "robust_dpo")
    _check_smoothing(label_smoothing, "robust_dpo", half_open=True)
    hw, hl = log_ratios(logps)
    z = beta * (hw - hl)
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return ObjectiveOutput(loss, pair_metrics(logps, beta * hw, beta * hl))


class IPOParams(Params):
    """Parameters of :func:`ipo`."""

    beta: float = Field(0.1, gt=0, description="τ, the IPO regulariser: target margin 1/(2τ) per token (TRL: 0.1)")


@register("ipo", params=IPOParams)
def ipo(logps: PairLogps, *, beta: float = 0.1) -> ObjectiveOutput:
    """IPO (Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    AISTATS 2024, arXiv 2310.12036), TRL ``loss_type="ipo"``.

    ``L = (Δ̄ - 1/(2τ))²`` where ``Δ̄ = h(y_w)/|y_w| - h(y_l)/|y_l|`` uses **per-token averaged**
    log-ratios (TRL's length normalisation, confirmed by the IPO authors; summed ratios make the squared
    loss grow with length). τ is exposed as ``beta``; default 0.1, i.e. a target margin of 5 nats/token.
    ``rewards/*`` stay TRL's β·(summed log-ratio); ``ipo/margin`` is the mean of Δ̄ to compare with
    ``ipo/margin_target``.
    """
    require_reference(logps, "ipo")
    hw, hl = log_ratios(logps)
    margin = token_mean(hw, logps.chosen_tokens) - token_mean(hl, logps.rejected_tokens)
    target = 1 / (2 * beta)
    loss = (margin - target) ** 2
    metrics = pair_metrics(logps, beta * hw, beta * hl)
    metrics["ipo/margin"] = mean(margin.detach())
    metrics["ipo/margin_target"] = torch.tensor(target)
    return ObjectiveOutput(loss, metrics)


class HingeParams(Params):
    """Parameters of :func:`hinge`."""

    beta: float = Field(0.1, gt=0, description="inverse margin: the hinge wants a log-ratio margin of 1/β (TRL: 0.1)")


@register("hinge", params=HingeParams)
def hinge(logps: PairLogps, *, beta: float = 0.1) -> ObjectiveOutput:
    """Reference-normalised hinge (RSO: Liu et al., "Statistical Rejection Sampling Improves Preference
    Optimization", ICLR 2024, arXiv 2309.06657; what most toolkits call "SLiC"), TRL ``loss_type="hinge"``.

    ``L = relu(1 - β·Δ)`` on summed log-ratios, i.e. a margin of 1/β in log-ratio units. Default β = 0.1
    (TRL). For the original raw-likelihood SLiC-HF loss use ``slic``.
    """
    require_reference(logps, "hinge")
    hw, hl = log_ratios(logps)
    slack = 1 - beta * (hw - hl)
    metrics = pair_metrics(logps, beta * hw, beta * hl)
    metrics["hinge_active_fraction"] = mean((slack > 0).float())
    return ObjectiveOutput(torch.relu(slack), metrics)


class SLiCParams(Params):
    """Parameters of :func:`slic`."""

    delta: float = Field(1.0, ge=0, description="δ, the hinge margin on raw summed log-likelihoods (paper: 1.0)")
    nll_weight: float = Field(0.5, ge=0, description="λ, weight of the chosen response's token-mean NLL")


@register("slic", needs_reference=False, params=SLiCParams)
def slic(logps: PairLogps, *, delta: float = 1.0, nll_weight: float = 0.5) -> ObjectiveOutput:
    """SLiC-HF (Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", 2023,
    arXiv 2305.10425), original reference-free form.

    ``L = max(0, δ - log π(y+|x) + log π(y-|x)) + λ·NLL(y+)`` with **raw summed** log-likelihoods in the
    hinge and the chosen response as the regulariser's target (the paper regularises towards SFT targets
    y_ref; the chosen responses stand in for them). **The NLL term is the per-token mean**,
    ``-log π(y+|x) / |y+|``, not the summed ``-log π(y_ref|x)`` the paper writes: the token mean is the usual
    SFT cross-entropy (TRL's "sft" term, RPO's default here), and it keeps λ's meaning independent of
    response length. Summed, the NLL of a 200-token response is ~200 times that of a 1-token one, so a fixed
    λ would let the regulariser swamp the δ = 1 hinge on long responses and vanish on short ones; with the
    mean, λ scales an average per-token NLL (a few nats at most) against the hinge whatever the length. Defaults:
    δ = 1.0 (paper), λ = 0.5 **[LOW confidence: not checked against the paper's tables]**. Without λ the
    hinge can push both likelihoods down.
    """
    margin = logps.chosen.float() - logps.rejected.float()
    slack = delta - margin
    nll = -token_mean(logps.chosen, logps.chosen_tokens)
    metrics = {
        "logps/chosen": mean(logps.chosen.detach()),
        "logps/rejected": mean(logps.rejected.detach()),
        "logp_margin": mean(margin.detach()),
        "hinge_active_fraction": mean((slack > 0).float()),
        "nll": mean(nll.detach()),
        **logits_metric(logps.chosen_logits_mean, logps.chosen_tokens, "logits/chosen"),
        **logits_metric(logps.rejected_logits_mean, logps.rejected_tokens, "logits/rejected"),
    }
    return ObjectiveOutput(torch.relu(slack) + nll_weight * nll, metrics)


class RPOParams(Params):
    """Parameters of :func:`rpo`."""

    beta: float = Field(0.1, gt=0, description="DPO inverse temperature β (also scales the NLL term)")
    eta: float = Field(1.0, ge=0, description="η, weight of the chosen-response NLL relative to β (term η·β·NLL)")
    nll_reduction: Literal["mean", "sum"] = Field(
        "mean", description="NLL per chosen response: token mean (TRL convention) or token sum")


@register("rpo", params=RPOParams)
def rpo(logps: PairLogps, *, beta: float = 0.1, eta: float = 1.0,
        nll_reduction: Literal["mean", "sum"] = "mean") -> ObjectiveOutput:
    """RPO (Liu et al., "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an
    Adversarial Regularizer", NeurIPS 2024, arXiv 2405.16436), Algorithm 2.

    ``L = L_DPO + η·β·NLL(y_w)``. The baseline distribution π_base of the paper is taken to be the
    **chosen responses** of the preference data. ``nll_reduction="mean"`` (default) uses the token-mean
    NLL of each chosen response (TRL convention; equals TRL ``loss_type=["sigmoid", "sft"]`` with
    ``loss_weights=[1, η·β]`` when chosen lengths are equal, since TRL averages over all chosen tokens of
    the batch rather than per example); ``"sum"`` uses the token-sum NLL, which keeps η·β on the scale of
    DPO's summed log-ratios. Defaults: β = 0.1, η = 1.0 **[LOW confidence; paper value not verified]**.
    Not to be confused with TRL's old ``rpo_alpha`` (Pang et al., "Iterative Reasoning Preference
    Optimization", 2024, arXiv 2404.19733).
    """
    require_reference(logps, "rpo")
    if nll_reduction not in ("mean", "sum"):
        raise ValueError(f"rpo: nll_reduction must be 'mean' or 'sum', got {nll_reduction!r}")
    hw, hl = log_ratios(logps)
    if nll_reduction == "mean":
        nll = -token_mean(logps.chosen, logps.chosen_tokens)
    else:
        nll = -logps.chosen.float()
    loss = -F.logsigmoid(beta * (hw - hl)) + eta * beta * nll
    metrics = pair_metrics(logps, beta * hw, beta * hl)
    metrics["nll"] = mean(nll.detach())
    return ObjectiveOutput(loss, metrics)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0; branch at -ln 2 to avoid cancellation (same as TRL's ORPO helper)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPOParams(Params):
    """Parameters of :func:`orpo`."""

    beta: float = Field(0.1, ge=0, description="λ, weight of the odds-ratio term next to the NLL (paper and TRL: 0.1)")


@register("orpo", needs_reference=False, params=ORPOParams)
def orpo(logps: PairLogps, *, beta: float = 0.1) -> ObjectiveOutput:
    """ORPO (Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
    EMNLP 2024, arXiv 2403.07691), TRL ``ORPOTrainer``; reference-free.

    ``L = NLL(y_w) - λ·log σ(log odds(y_w) - log odds(y_l))`` with ``odds(y) = p/(1-p)`` and
    ``log p`` the **mean** per-token log-prob. NLL is the token-mean NLL of the chosen response, per
    example (TRL averages over all chosen tokens in the batch *including the prompt*; alignkit only has
    response log-probs). λ is TRL's ``beta``, default 0.1. As in TRL, ``rewards/*`` are β·mean-log-prob
    and ``logps/*`` are mean log-probs; ``log_odds_ratio`` is mean log σ(·) and ``log_odds_chosen`` the
    mean log-odds ratio (TRL's names).
    """
    avg_w = token_mean(logps.chosen, logps.chosen_tokens).clamp(max=_ORPO_MAX_MEAN_LOGP)
    avg_l = token_mean(logps.rejected, logps.rejected_tokens).clamp(max=_ORPO_MAX_MEAN_LOGP)
    log_odds = (avg_w - avg_l) - (_log1mexp(avg_w) - _log1mexp(avg_l))
    ratio = F.logsigmoid(log_odds)
    nll = -avg_w
    metrics = pair_metrics(logps, beta * avg_w, beta * avg_l, avg_w, avg_l)
    metrics["nll_loss"] = mean(nll.detach())
    metrics["log_odds_ratio"] = mean(ratio.detach())
    metrics["log_odds_chosen"] = mean(log_odds.detach())
    return ObjectiveOutput(nll - beta * ratio, metrics)


class SimPOParams(Params):
    """Parameters of :func:`simpo`."""

    beta: float = Field(2.0, gt=0, description="β, scale of the length-normalised reward (SimPO repo: 2.0)")
    gamma_beta_ratio: float = Field(0.25, ge=0, description="γ/β, the target reward margin over β (SimPO repo: 0.25)")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="conservative (cDPO-style) label-flip rate ε")


@register("simpo", needs_reference=False, params=SimPOParams)
def simpo(logps: PairLogps, *, beta: float = 2.0, gamma_beta_ratio: float = 0.25,
          label_smoothing: float = 0.0) -> ObjectiveOutput:
    """SimPO (Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    NeurIPS 2024, arXiv 2405.14734), TRL ``CPOTrainer(loss_type="simpo", cpo_alpha=0)``; reference-free.

    ``L = -log σ(β·(avg_w - avg_l) - γ)`` with mean per-token log-probs and ``γ = gamma_beta_ratio·β``
    (the SimPO repo's parametrisation). TRL's ``simpo_gamma`` is γ itself (it subtracts simpo_gamma/β
    and then multiplies by β), so TRL ``simpo_gamma = gamma_beta_ratio·β``. ``label_smoothing`` gives the
    same conservative form as TRL. Defaults: β = 2.0, γ/β = 0.25, the defaults of ``SimPOConfig`` in the
    authors' repository (princeton-nlp/SimPO, ``scripts/simpo_config.py``); its per-model training configs
    tune both (β 2.5 with γ/β 0.55 for Llama-3-8B-Instruct, β 10 with γ/β 0.3-0.5 for the v2 and Gemma-2
    runs), and TRL's own defaults are β = 0.1, simpo_gamma = 0.5. As in
    TRL, ``rewards/*`` are β·mean-log-prob and ``logps/*`` mean log-probs.
    """
    _check_smoothing(label_smoothing, "simpo")
    avg_w = token_mean(logps.chosen, logps.chosen_tokens)
    avg_l = token_mean(logps.rejected, logps.rejected_tokens)
    loss = _conservative_sigmoid(beta * (avg_w - avg_l) - gamma_beta_ratio * beta, label_smoothing)
    return ObjectiveOutput(loss, pair_metrics(logps, beta * avg_w, beta * avg_l, avg_w, avg_l))
