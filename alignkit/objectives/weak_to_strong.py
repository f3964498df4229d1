"""Weak-to-strong generalisation: losses on weak labels and the performance gap recovered (PGR).

Papers: Burns et al., "Weak-to-Strong Generalization: Eliciting Strong Capabilities With Weak Supervision"
(OpenAI, ICML 2024, arXiv 2312.09390; code ``openai/weak-to-strong``), and the pilot study of weak-to-strong
*alignment* beyond accuracy by Ye, Xiao and Hui (ICLR 2025 Bi-Align workshop, arXiv 2410.12621; code
``yeruimeng/WTS``), which trains the strong model with plain cross-entropy on the weak model's hard labels.

The strong student is a two-class classifier; ``logits`` are [B, 2] with column 1 the positive class (Burns'
convention). Weak labels are the weak supervisor's probability of the positive class, [B] in [0, 1]: soft in
Burns, 0/1 (argmax) in the pilot.

* :func:`xent_loss`: soft-target cross-entropy against the weak labels (Burns ``xent``; the pilot with hard
  labels).
* :func:`logconf_loss`: Burns' auxiliary confidence loss, exactly ``weak_to_strong/loss.py::logconf_loss_fn``::

      p = softmax(logits);  t = quantile(p[:, 0], mean(weak[:, 1]))
      hard = onehot(class 0 if p[:, 0] >= t else class 1).detach()
      α = aux_coef · (step_frac if step_frac <= warmup_frac else 1)
      L = CE(logits, (1 − α)·weak + α·hard)

  The quirk is kept: during warm-up α ramps from 0 to ``aux_coef · warmup_frac`` (0.05 with the defaults)
  and then jumps to ``aux_coef`` (0.5).
* :func:`performance_gap_recovered` and :func:`pgr_bootstrap`: ``PGR = (perf_w2s − perf_weak) /
  (perf_ceiling − perf_weak)`` (Burns' definition), with a percentile bootstrap over test examples.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, mean
from alignkit.stats import bootstrap_replicates, percentile_interval

# Below this gap between ceiling and weak performance PGR is undefined (reported as NaN).
MIN_GAP = 1e-9


def class_logits(positive_logps: Tensor, negative_logps: Tensor) -> Tensor:
    """[B, 2] two-class logits from the log-probs of the negative and positive label responses: the softmax
    over them is the classifier restricted to its two answers."""
    return torch.stack([negative_logps.float(), positive_logps.float()], dim=-1)


def two_class_targets(positive_prob: Tensor) -> Tensor:
    """[B, 2] target distribution (1 − p, p) from the probability p of the positive class."""
    p = positive_prob.float()
    return torch.stack([1 - p, p], dim=-1)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy −Σ_c target_c · log softmax(logits)_c, [B]."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def _metrics(logits: Tensor) -> dict[str, Tensor]:
    return {"w2s/strong_positive_rate": mean((logits.detach().argmax(-1) == 1).float())}


def xent_loss(logits: Tensor, weak_positive_prob: Tensor) -> ObjectiveOutput:
    """Cross-entropy of the strong student's [B, 2] logits against the weak labels (soft or hard), [B]."""
    loss = soft_cross_entropy(logits, two_class_targets(weak_positive_prob))
    return ObjectiveOutput(loss, _metrics(logits))


def logconf_coefficient(step_frac: float, aux_coef: float = 0.5, warmup_frac: float = 0.1) -> float:
    """α of Burns' auxiliary confidence loss at training progress ``step_frac`` in [0, 1]."""
    return aux_coef * (step_frac if step_frac <= warmup_frac else 1.0)


def logconf_loss(logits: Tensor, weak_positive_prob: Tensor, step_frac: float, aux_coef: float = 0.5,
                 warmup_frac: float = 0.1) -> ObjectiveOutput:
    """Burns et al.'s auxiliary confidence loss (module docstring), per example [B].

    The hardened targets threshold the student's own class-0 probability at the batch quantile that makes
    their class balance match the weak labels' (``mean(weak[:, 1])`` of the batch), so the student is pulled
    towards confident predictions of its own rather than towards the weak supervisor's mistakes.
    """
    logits = logits.float()
    weak = two_class_targets(weak_positive_prob)
    alpha = logconf_coefficient(step_frac, aux_coef, warmup_frac)
    p0 = torch.softmax(logits, dim=-1)[:, 0]
    threshold = torch.quantile(p0, weak[:, 1].mean())
    hard = torch.stack([p0 >= threshold, p0 < threshold], dim=-1).float().detach()
    target = (1 - alpha) * weak + alpha * hard
    metrics = _metrics(logits)
    metrics["w2s/aux_coef"] = torch.tensor(alpha)
    return ObjectiveOutput(soft_cross_entropy(logits, target), metrics)


def performance_gap_recovered(weak: float, weak_to_strong: float, ceiling: float) -> float:
    """Burns' PGR = (weak_to_strong − weak) / (ceiling − weak); NaN when the ceiling does not beat the weak
    model's performance by more than :data:`MIN_GAP` (the ratio is then meaningless). For lower-is-better
    metrics the formula holds unchanged: numerator and denominator flip sign together."""
    gap = ceiling - weak
    return (weak_to_strong - weak) / gap if abs(gap) > MIN_GAP else math.nan


def pgr_bootstrap(weak_correct: Tensor, w2s_correct: Tensor, ceiling_correct: Tensor, n_boot: int = 1000,
                  seed: int = 0, confidence: float = 0.95) -> dict[str, float]:
    """PGR of accuracy on one test set and its percentile bootstrap interval.

    The three [N] 0/1 tensors mark which test examples the weak model, the strong student trained on weak
    labels and the strong ceiling got right; each bootstrap replicate resamples the *same* examples for all
    three (paired; the resamples are :mod:`alignkit.stats`' seeded stream). Accuracy is higher-is-better, so PGR
    needs a ceiling above the weak model: replicates whose gap ``ceiling − weak`` is not above :data:`MIN_GAP`
    are dropped (``n_valid`` says how many remain), and ``pgr`` is NaN when the measured ceiling does not beat the
    weak model (a negative gap would flip the ratio's sign into a meaningless number). Returns the accuracies,
    ``pgr``, ``ci_low``, ``ci_high``, ``n``, ``n_valid``.
    """
    correct = np.stack([c.detach().cpu().double().numpy().reshape(-1)
                        for c in (weak_correct, w2s_correct, ceiling_correct)])  # [3, N]
    n = correct.shape[1]
    if n == 0:
        raise ValueError("PGR needs at least one test example")
    weak, w2s, ceiling = correct.mean(1).tolist()

    def resampled_pgr(idx: np.ndarray) -> np.ndarray:  # [chunk, N] indices -> [chunk] PGRs, NaN where undefined
        weak_b, w2s_b, ceiling_b = correct[:, idx].mean(-1)
        gap = ceiling_b - weak_b
        valid = gap > MIN_GAP
        return np.where(valid, (w2s_b - weak_b) / np.where(valid, gap, 1.0), np.nan)

    replicates = bootstrap_replicates(resampled_pgr, n, n_boot, seed, batched=True)
    replicates = replicates[~np.isnan(replicates)]
    low, high = percentile_interval(replicates, confidence) if replicates.size else (math.nan, math.nan)
    return {"weak_accuracy": weak, "w2s_accuracy": w2s, "ceiling_accuracy": ceiling,
            "pgr": performance_gap_recovered(weak, w2s, ceiling) if ceiling - weak > MIN_GAP else math.nan,
            "ci_low": low, "ci_high": high,
            "n": float(n), "n_valid": float(replicates.size)}
