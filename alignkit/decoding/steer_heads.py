"""Head-level steering in the manner of PAS (Zhu et al., "Personality Alignment of Large Language Models", ICLR
2025, arXiv:2408.11779) and ITI (Li et al., "Inference-Time Intervention", NeurIPS 2023, arXiv:2306.03341): the
math that does not touch a model, used by :mod:`alignkit.decoding.steer`.

* :func:`contrast_directions`: per group of features (a layer, or one attention head), the unit mass-mean
  difference of the contrast pairs' activations (balanced over keying by default) and σ, the spread of every
  training activation projected on it.
* :func:`probe_scores` / :func:`select_heads`: per head, an L2-regularised logistic-regression probe separating
  pole answers from opposite ones, scored by its accuracy on items it was not fitted on (k-fold over items, so a
  pair never sits on both sides); the K heads with the best held-out accuracy are kept (ties: the higher held-out
  probability of the true label). PAS keeps the top 24 heads by probe accuracy on a held-out split; the folds
  and the feature standardisation are this reconstruction's choice for questionnaires of a few items.
* :class:`HeadSteering`: the intervention. A forward pre-hook on a layer's ``self_attn.o_proj`` (whose input is
  the heads' outputs, concatenated) adds α·σ_h·d_h to each selected head's slice, at every position.
* :func:`search_alpha`: the grid point maximising a margin function (PAS searches α on the user's answers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def contrast_directions(acts: Tensor, keyed: Sequence[int], balanced: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Unit directions [G, d], scales σ [G] and the raw differences' norms [G] from ``acts`` [2N, G, d]: the first
    N rows are the pole answers of N items (keyed +1/−1), the last N the opposite answers of the same items."""
    n = len(keyed)
    paired = acts[:n] - acts[n:]  # pole answer − opposite answer, per item
    keys = torch.tensor(list(keyed))
    groups = [paired[keys == key] for key in (1, -1)] if balanced else [paired]
    diff = torch.stack([g.mean(0) for g in groups if len(g)]).mean(0)
    norms = diff.norm(dim=-1)
    directions = diff / norms.clamp(min=1e-12)[:, None]
    projected = torch.einsum("mgd,gd->mg", acts, directions)
    scales = projected.std(0) if len(acts) > 1 else torch.ones(len(directions))
    return directions, scales, norms


def fit_probes(x: Tensor, y: Tensor, l2: float = 1.0, iterations: int = 100) -> tuple[Tensor, Tensor]:
    """One logistic regression per group, all at once: ``x`` [G, M, d], labels ``y`` [M] in {0, 1}. Minimises
    Σ_m BCE + (l2 / 2)·‖w‖² per group (scikit-learn's default with C = 1 / l2) by L-BFGS; the groups'
    objectives are independent, so minimising their sum fits each. Returns weights [G, d] and biases [G]."""
    x, y = x.double(), y.double()
    w = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def objective() -> Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("gmd,gd->gm", x, w) + b[:, None]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="sum")
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return w.detach(), b.detach()


def probe_scores(acts: Tensor, item_of: Sequence[int], labels: Sequence[int], folds: int = 4, l2: float = 1.0
                 ) -> tuple[Tensor, Tensor]:
    """Held-out accuracy [G] and held-out mean probability of the true label [G] of a probe per group, from
    ``acts`` [M, G, d] with ``labels`` [M] and the item each row belongs to: k-fold over items (fold = item
    index mod k), features standardised with the training fold's mean and spread."""
    items = sorted(set(item_of))
    folds = max(2, min(folds, len(items)))
    item_of, y = torch.tensor(list(item_of)), torch.tensor(list(labels), dtype=torch.float64)
    correct = torch.zeros(acts.shape[1], dtype=torch.float64)
    likelihood = torch.zeros(acts.shape[1], dtype=torch.float64)
    for fold in range(folds):
        test = torch.isin(item_of, torch.tensor([it for i, it in enumerate(items) if i % folds == fold]))
        x = acts.double().transpose(0, 1)  # [G, M, d]
        mean, std = x[:, ~test].mean(1, keepdim=True), x[:, ~test].std(1, keepdim=True).clamp(min=1e-6)
        x = (x - mean) / std
        w, b = fit_probes(x[:, ~test], y[~test], l2)
        p = torch.sigmoid(torch.einsum("gmd,gd->gm", x[:, test], w) + b[:, None])
        correct += ((p > 0.5).double() == y[test]).double().sum(1)
        likelihood += torch.where(y[test] > 0, p, 1 - p).sum(1)
    return correct / len(y), likelihood / len(y)


def select_heads(acts: Tensor, item_of: Sequence[int], labels: Sequence[int], k: int, usable: Tensor | None = None,
                 folds: int = 4) -> tuple[list[int], Tensor]:
    """The ``k`` groups (heads) of ``acts`` [M, G, d] whose probes have the best held-out accuracy (ties: the
    higher held-out probability of the true label, then the lower index), best first; and every group's
    held-out accuracy. ``usable`` [G] (bool) excludes groups, e.g. heads without a direction."""
    accuracy, likelihood = probe_scores(acts, item_of, labels, folds)
    order = sorted(range(acts.shape[1]), key=lambda g: (-accuracy[g].item(), -likelihood[g].item(), g))
    if usable is not None:
        order = [g for g in order if bool(usable[g])]
    return order[:k], accuracy


def attention_output(layer: nn.Module) -> nn.Module:
    """The module whose input is the attention heads' concatenated outputs (Llama-style ``self_attn.o_proj``)."""
    projection = getattr(getattr(layer, "self_attn", None), "o_proj", None)
    if projection is None:
        raise ValueError("steer: head-level steering needs decoder layers with self_attn.o_proj (Llama-style)")
    return projection


def _pre_adder(vector: Tensor):
    def hook(module: nn.Module, args: Any) -> Any:
        heads = args[0]
        return (heads + vector.to(device=heads.device, dtype=heads.dtype), *args[1:])

    return hook


@dataclass
class HeadSteering:
    """A trait's unit direction d_h and scale σ_h per selected head ``(layer, head)``, and the heads' held-out
    probe accuracy."""

    trait: str
    directions: dict[tuple[int, int], Tensor]  # [head_dim] each
    scales: dict[tuple[int, int], float]
    accuracy: dict[tuple[int, int], float]
    train_items: int
    num_heads: int
    head_dim: int

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for layer, _ in self.directions}))

    @property
    def heads(self) -> list[tuple[int, int]]:
        return list(self.directions)

    def vectors(self, alpha: float) -> dict[int, Tensor]:
        """Per layer, what is added to o_proj's input: α·σ_h·d_h in each selected head's slice, zero elsewhere."""
        out: dict[int, Tensor] = {}
        for (layer, head), direction in self.directions.items():
            vector = out.setdefault(layer, torch.zeros(self.num_heads * self.head_dim))
            vector[head * self.head_dim:(head + 1) * self.head_dim] += alpha * self.scales[layer, head] * direction
        return out

    def attach(self, layers: nn.ModuleList, alpha: float) -> list:
        """Register the pre-hooks on the selected layers' o_proj; the caller removes the returned handles."""
        return [attention_output(layers[index]).register_forward_pre_hook(_pre_adder(vector))
                for index, vector in self.vectors(alpha).items()]

    def describe(self) -> dict[str, Any]:
        return {"heads": [[layer, head] for layer, head in self.directions],
                "sigma": [round(v, 5) for v in self.scales.values()],
                "probe_accuracy": [round(v, 4) for v in self.accuracy.values()]}


def search_alpha(margin_of: Callable[[float], float], grid: Sequence[float]) -> tuple[float, list[dict[str, float]]]:
    """The grid point with the highest ``margin_of(α)`` (ties: the smaller |α|, the gentler intervention, then the
    earlier point), and every point's margin."""
    if not grid:
        raise ValueError("steer: the alpha search needs a non-empty grid")
    rows = [{"alpha": float(a), "margin": float(margin_of(a))} for a in grid]
    best = max(range(len(rows)), key=lambda i: (rows[i]["margin"], -abs(rows[i]["alpha"]), -i))
    return rows[best]["alpha"], rows
