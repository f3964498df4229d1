"""CycleAlign's ranking pieces: agreement of two rankings, Kendall τ, the white box's label and its ranking loss.

Paper: Hong et al., "CycleAlign: Iterative Distillation from Black-box LLM to White-box Models for Better Human
Alignment" (ACL Findings 2024, arXiv 2310.16271). **Reconstruction** (method notes: LOW-MEDIUM confidence; the
cycle structure is from the abstract, the loss details are reconstructed):

* The white-box model ranks N candidates by its length-normalised log-likelihood ``log p(y|x)/|y|``; a
  black-box model ranks them too. Their **agreement** is the longest common subsequence of the two rankings
  (:func:`agreement_ranking`); shorter than ``min_agreement`` (2) it does not count as agreed ([LOW: the exact
  fallback rule]). Agreed rankings become the black box's in-context demonstrations.
* **What the white box trains on** (:func:`cycle_label`), the one place this choice is made. Read literally, the
  notes train the white box on the agreement with a hinge over the same length-normalised scores that ranked
  it; but the agreement is a subsequence of the white box's own ranking, so that hinge is zero by construction
  (it only fires on the fallback). alignkit's reconstruction (``label: black_box``, the default) trains the
  hinge on the **black-box ranking** instead, over the pairs the black box strictly orders (equal black-box
  scores, e.g. two verifier passes, are not a preference): it fires exactly on the pairs where the white box
  disagrees, so the white box distils the black box's judgement. ``label: agreement`` keeps the literal reading
  (the agreement when long enough, else the black-box ranking) for comparison.
* The loss (:func:`ranking_loss`) is an RRHF-style pairwise hinge over length-normalised log-probs plus SFT on
  the top-ranked response::

      s_i = log π(y_i|x) / |y_i|                        (ranked best first)
      L_rank = Σ_{i<j, t_i>t_j} max(0, s_j − s_i)        (every pair the ranking strictly orders; t: tiers)
      L = L_rank + sft_weight · (−s_1)                  (SFT: mean per-token NLL of the best response)

  Which ranking loss the paper uses (RRHF hinge or PRO's listwise softmax) is not confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput

Label = Literal["black_box", "agreement"]


def longest_common_subsequence(first: list[int], second: list[int]) -> list[int]:
    """The longest common subsequence of two sequences (dynamic programming; ties keep ``first``'s earliest)."""
    n, m = len(first), len(second)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = (table[i + 1][j + 1] + 1 if first[i] == second[j]
                           else max(table[i + 1][j], table[i][j + 1]))
    out, i, j = [], 0, 0
    while i < n and j < m:
        if first[i] == second[j]:
            out.append(first[i])
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return out


def agreement_ranking(black_box: list[int], white_box: list[int], min_agreement: int = 2) -> tuple[list[int], bool]:
    """(the agreement-or-fallback ranking, whether it is the agreement): the LCS of the two best-first rankings
    of candidate indices, or the black-box ranking when the LCS is shorter than ``min_agreement``.
    [reconstruction]"""
    common = longest_common_subsequence(black_box, white_box)
    return (common, True) if len(common) >= min_agreement else (list(black_box), False)


@dataclass
class CycleLabel:
    """What one prompt's candidates teach the white box (``ranking``, ``tiers``) and the black box
    (``agreement``, when ``agreed``)."""

    ranking: list[int]  # candidate indices the loss trains on, best first
    tiers: list[float]  # black-box score of each ranked candidate: pairs with equal tiers are not ordered
    agreement: list[int]  # the longest common subsequence of the two rankings
    agreed: bool  # the agreement is at least min_agreement long: a demonstration for the black box
    black: list[int]  # the black box's ranking, best first (ties by index)
    white: list[int]  # the white box's ranking


def cycle_label(black_scores: list[float], white_scores: list[float], min_agreement: int = 2,
                label: Label = "black_box") -> CycleLabel:
    """Both rankings (best first, ties by index), their agreement and the white box's training ranking
    (module docstring: ``black_box`` is the reconstruction, ``agreement`` the literal reading). [reconstruction]"""
    black = sorted(range(len(black_scores)), key=lambda i: (-black_scores[i], i))
    white = sorted(range(len(white_scores)), key=lambda i: (-white_scores[i], i))
    agreement, agreed = agreement_ranking(black, white, min_agreement)
    ranking = black if label == "black_box" else agreement
    # the literal reading treats the agreement as a strict order (its tiers are positions)
    tiers = ([float(black_scores[i]) for i in ranking] if label == "black_box" or not agreed
             else [float(len(ranking) - k) for k in range(len(ranking))])
    return CycleLabel(ranking, tiers, agreement if agreed else [], agreed, black, white)


def kendall_tau(first: list[int], second: list[int]) -> float:
    """Kendall's τ between two best-first rankings of the same items: (concordant − discordant) / pairs."""
    position = {item: k for k, item in enumerate(second)}
    pairs = concordant = 0
    for a in range(len(first)):
        for b in range(a + 1, len(first)):
            pairs += 1
            concordant += 1 if position[first[a]] < position[first[b]] else -1
    return concordant / pairs if pairs else 1.0


def ranking_loss(logps: Tensor, tokens: Tensor, sft_weight: float = 1.0, tiers: Tensor | None = None
                 ) -> ObjectiveOutput:
    """RRHF-style ranking loss plus SFT for one ranked list (module docstring). [reconstruction]

    Args:
        logps: [K] summed response log-probs of the ranked responses, best first.
        tokens: [K] response token counts.
        sft_weight: weight of the mean per-token NLL of the best response.
        tiers: [K] non-increasing scores of the ranking; only pairs with ``tiers[i] > tiers[j]`` are hinged.
            None: every pair i < j is ordered.
    Returns a one-element loss [1] and metrics ``rank_loss``, ``sft_loss``, ``ordered_pairs`` and
    ``ranked_correctly`` (share of the ordered pairs whose scores already agree; 1 when none is ordered).
    """
    scores = logps.float() / tokens.float().clamp(min=1.0)
    k = scores.shape[0]
    ordered = torch.triu(torch.ones(k, k, dtype=torch.bool, device=scores.device), diagonal=1)
    if tiers is not None:
        tiers = tiers.float().to(scores.device)
        ordered &= tiers.unsqueeze(1) > tiers.unsqueeze(0)
    gaps = scores.unsqueeze(0) - scores.unsqueeze(1)  # gaps[i, j] = s_j − s_i
    rank = torch.clamp(gaps[ordered], min=0).sum()
    sft = -scores[0]
    correct = (gaps[ordered] < 0).float().mean() if ordered.any() else torch.ones(())
    loss = (rank + sft_weight * sft).unsqueeze(0)
    return ObjectiveOutput(loss, {"rank_loss": rank.detach(), "sft_loss": sft.detach(), "ranked_correctly": correct,
                                  "ordered_pairs": ordered.sum().float()})
