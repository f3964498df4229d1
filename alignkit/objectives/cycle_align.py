"""CycleAlign's ranking pieces: agreement of two rankings, Kendall τ, and the white-box ranking loss.

Paper: Hong et al., "CycleAlign: Iterative Distillation from Black-box LLM to White-box Models for Better Human
Alignment" (ACL Findings 2024, arXiv 2310.16271). **Reconstruction** (method notes: LOW-MEDIUM confidence; the
cycle structure is from the abstract, the loss details are reconstructed):

* The white-box model ranks N candidates by its length-normalised log-likelihood ``log p(y|x)/|y|``; a
  black-box model ranks them too. Their **agreement** is the longest common subsequence of the two rankings
  (:func:`agreement_ranking`); shorter than ``min_agreement`` (2) falls back to the black-box ranking
  ([LOW: the exact fallback rule]).
* The white box trains on the agreement ranking with an RRHF-style pairwise hinge over length-normalised
  log-probs plus SFT on the top-ranked response (:func:`ranking_loss`)::

      s_i = log π(y_i|x) / |y_i|                        (ranked best first)
      L_rank = Σ_{i<j} max(0, s_j − s_i)                (every pair the ranking orders)
      L = L_rank + sft_weight · (−s_1)                  (SFT: mean per-token NLL of the best response)

  Which ranking loss the paper uses (RRHF hinge or PRO's listwise softmax) is not confirmed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput


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
    """(the ranking to train on, whether it is the agreement): the LCS of the two best-first rankings of
    candidate indices, or the black-box ranking when the LCS is shorter than ``min_agreement``. [reconstruction]"""
    common = longest_common_subsequence(black_box, white_box)
    return (common, True) if len(common) >= min_agreement else (list(black_box), False)


def kendall_tau(first: list[int], second: list[int]) -> float:
    """Kendall's τ between two best-first rankings of the same items: (concordant − discordant) / pairs."""
    position = {item: k for k, item in enumerate(second)}
    pairs = concordant = 0
    for a in range(len(first)):
        for b in range(a + 1, len(first)):
            pairs += 1
            concordant += 1 if position[first[a]] < position[first[b]] else -1
    return concordant / pairs if pairs else 1.0


def ranking_loss(logps: Tensor, tokens: Tensor, sft_weight: float = 1.0) -> ObjectiveOutput:
    """RRHF-style ranking loss plus SFT for one ranked list (module docstring). [reconstruction]

    Args:
        logps: [K] summed response log-probs of the ranked responses, best first.
        tokens: [K] response token counts.
        sft_weight: weight of the mean per-token NLL of the best response.
    Returns a one-element loss [1] and metrics ``rank_loss``, ``sft_loss``, ``ranked_correctly`` (share of the
    ordered pairs whose scores already agree).
    """
    scores = logps.float() / tokens.float().clamp(min=1.0)
    k = scores.shape[0]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=scores.device), diagonal=1)
    gaps = scores.unsqueeze(0) - scores.unsqueeze(1)  # gaps[i, j] = s_j − s_i
    rank = torch.clamp(gaps[upper], min=0).sum()
    sft = -scores[0]
    correct = (gaps[upper] < 0).float().mean() if upper.any() else torch.ones(())
    loss = (rank + sft_weight * sft).unsqueeze(0)
    return ObjectiveOutput(loss, {"rank_loss": rank.detach(), "sft_loss": sft.detach(), "ranked_correctly": correct})
