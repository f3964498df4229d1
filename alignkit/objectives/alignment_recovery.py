"""Alignment recovery after fine-tuning: gradient-guided restoration of aligned weights, with rollback.

Paper: Yang et al., "Alleviating the Fear of Losing Alignment in LLM Fine-tuning" (IEEE S&P 2025,
arXiv 2504.09757; code ``kangyangWHU/LLMAlignment``, ``sgdg_rollback_final.py``). Method notes: MEDIUM-HIGH
confidence for the structure; exact names approximate.

Pure tensor pieces of one step (the model plumbing is ``alignkit.train.methods.alignment_recovery``):

* :func:`direction_loss`: ``L = −cos(mean_batch h, d)``, the hidden state (last token, layer ``layer_end``)
  averaged over a batch against a direction: the aligned model's mean on harmful prompts (``d_h``, recovery)
  or the fine-tuned model's mean on task data (``d_b``, rollback).
* :func:`toward_mask`: where moving a weight from its current value W to a target value T is a descent
  direction of L: the step is ``T − W``, descent when it opposes the gradient, i.e.
  ``sign(W − T) == sign(∂L/∂W)`` (and ``W != T``).
* :func:`top_k_masks`: the global top-k entries by |gradient| among such candidates, across all tensors.

Recovery restores ``W[mask] ← W_A[mask]`` with ``k = sparsity · N_params``; rollback resets the top
``rollback_rate`` share of the weights just restored, among those where going back to W_F is a descent direction
of the benign loss, to W_F.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def direction_loss(hidden: Tensor, direction: Tensor) -> Tensor:
    """−cos(mean over the batch of ``hidden`` [B, D], ``direction`` [D]): a scalar in [−1, 1]."""
    return -F.cosine_similarity(hidden.float().mean(0), direction.float(), dim=0)


def toward_mask(current: Tensor, target: Tensor, grad: Tensor) -> Tensor:
    """Bool mask of entries where setting ``current`` to ``target`` moves against the gradient (descent)."""
    return (torch.sign(current - target) == torch.sign(grad)) & (current != target)


def top_k_masks(grads: dict[str, Tensor], candidates: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    """Per tensor, the entries among ``candidates`` whose |gradient| is among the ``k`` largest over all
    tensors' candidates (ties at the threshold are all kept, as a threshold on |grad| does)."""
    scores = torch.cat([grads[n].abs().flatten()[candidates[n].flatten()] for n in grads])
    if k <= 0 or scores.numel() == 0:
        return {n: torch.zeros_like(candidates[n]) for n in grads}
    threshold = torch.topk(scores, min(k, scores.numel())).values[-1]
    return {n: candidates[n] & (grads[n].abs() >= threshold) for n in grads}
