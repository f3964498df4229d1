"""DCKD and ADPA: preference distillation into a small student.

Paper: Gao et al., "Advantage-Guided Distillation for Preference Alignment in Small Language Models",
ICLR 2025, arXiv 2502.17927. Loss structure: confidence HIGH (trainer code read). Weights: LOW — the
trainer's config defaults are all 0 and the per-model recipe values were not seen, so every weight here
defaults to 0 and the functions refuse to run with nothing switched on.

Teachers (same tokenizer as the student): an SFT *reference teacher* π_ref^T and its DPO-trained *DPO
teacher* π_dpo^T. Their token distributions are precomputed and compressed to the top-k entries per
position; the rest of the vocabulary is one "other" bucket holding the remaining mass.

Token alignment convention for every tensor below: position t of ``*_logits`` is the distribution that
predicted token t of the response (the caller has already shifted), ``*_labels[t]`` is that token,
``*_mask[t]`` marks response tokens, and teacher top-k tensors [B, T, K] sit on the same positions.

**DCKD** (dual-constrained knowledge distillation)::

    KL_w = mean_{t∈y_w} KL(p_T(·|x,y_w,<t) ‖ p_θ(·|x,y_w,<t))      over the k+1 buckets
    KL_l = same on y_l
    L_DCKD = w_sft·NLL(y_w) + w_distill·(w_c·KL_w + w_r·KL_l)

**ADPA** (advantage-guided distillation), on responses y^S sampled from the student::

    A(s_t, v) = log π_dpo^T(v|s_t) − log π_ref^T(v|s_t)               v on the teacher top-k support
    L_ADPA = −mean_{t∈y^S} Σ_v π_θ(v|s_t)·A(s_t, v)
    optional importance weight: L_ADPA ← L_ADPA · exp(log π_θ(y^S|x) − log π_ref^S(y^S|x))
    L = w_sft·NLL(y_w) + w_adpa·L_ADPA + w_kl·(log π_ref^S(y^S|x) − log π_θ(y^S|x))

ADPA+ is ADPA started from a DCKD student. The optional DPO term of the reference trainer is the
ordinary DPO objective and is added by the loop. NLL is the per-token mean over y_w. Where the trainer
averages over all tokens of the batch, these functions average per example (the loop takes the mean).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignkit.objectives.base import ObjectiveOutput, mean

STUDENT_PROB_FLOOR = 1e-7  # as in the reference trainer: student probs are clamped >= 1e-7 before the KL's log


# ---------------------------------------------------------------------------------------------- helpers


def _masked_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-example mean over masked positions [B]; empty rows give 0 (where, so NaN at pads cannot leak)."""
    mask = mask.bool()
    return torch.where(mask, values, 0.0).sum(-1) / mask.sum(-1).clamp(min=1).float()


def _label_logps(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-token log p_θ(label) [B, T], zero outside the mask."""
    logp = logits.float().log_softmax(-1).gather(-1, labels.long().clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(mask.bool(), logp, 0.0)


def teacher_advantage(dpo_teacher_logprobs: Tensor, ref_teacher_logprobs: Tensor) -> Tensor:
    """A(s_t, v) = log π_dpo^T − log π_ref^T on the shared support: the DPO teacher's implicit token reward
    divided by β (β is folded into the ADPA weight)."""
    return dpo_teacher_logprobs.float() - ref_teacher_logprobs.float()


def merge_teacher_topk(
    dpo_idx: Tensor, dpo_logprobs: Tensor, ref_idx: Tensor, ref_logprobs: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Put both teachers' top-k log-probs [B, T, K] on one support: the union of their indices.

    Returns (support_idx, dpo_logprobs, ref_logprobs, support_mask), each [B, T, 2K]. A teacher's
    missing entry is floored at that teacher's own smallest top-k log-prob at the position (an upper
    bound on any token it left out); the reference merge script floored both with the DPO teacher's min,
    a bug not copied. Indices in both sets appear twice; ``support_mask`` drops the second copy.
    """
    support = torch.cat([dpo_idx, ref_idx], dim=-1)

    def lookup(idx: Tensor, logprobs: Tensor) -> Tensor:
        match = support[..., :, None] == idx[..., None, :]  # [B, T, 2K, K]
        found = torch.where(match, logprobs.float()[..., None, :], 0.0).sum(-1)
        floor = logprobs.float().min(dim=-1, keepdim=True).values
        return torch.where(match.any(-1), found, floor)

    duplicate = (ref_idx[..., :, None] == dpo_idx[..., None, :]).any(-1)
    support_mask = torch.cat([torch.ones_like(duplicate), ~duplicate], dim=-1)
    return support, lookup(dpo_idx, dpo_logprobs), lookup(ref_idx, ref_logprobs), support_mask


def _require_weights(name: str, **weights: float) -> None:
    if all(w == 0 for w in weights.values()):
        raise ValueError(f"{name}: every loss term has weight 0 (the reference trainer's defaults); "
                         f"make one of {', '.join(weights)} non-zero")


# ---------------------------------------------------------------------------------------------- DCKD


def topk_forward_kl_tokens(
    student_logits: Tensor, teacher_topk_idx: Tensor, teacher_topk_logprobs: Tensor
) -> Tensor:
    """Per-token KL(p_T ‖ p_θ) [B, T] over the teacher's top-k entries plus one "other" bucket.

    The teacher's bucket holds 1 − Σ_k p_T, the student's holds 1 − Σ_k p_θ at the same indices, so this
    is the exact KL between the two (k+1)-bucket coarsenings. Student probs (top-k and bucket) are clamped
    at 1e-7 as in the reference trainer. Indices at one position must be distinct. Teacher entries with
    p_T = 0 (−inf or NaN log-prob, e.g. padding) contribute 0, and negative indices are read as 0, so
    padded positions stay finite in value and gradient.
    """
    log_q_all = student_logits.float().log_softmax(-1)
    log_q = log_q_all.gather(-1, teacher_topk_idx.long().clamp(min=0))
    q_rest = 1.0 - log_q.exp().sum(-1)
    log_q = log_q.clamp(min=math.log(STUDENT_PROB_FLOOR))
    log_q_rest = q_rest.clamp(min=STUDENT_PROB_FLOOR).log()

    teacher = teacher_topk_logprobs.float()
    teacher = torch.where(torch.isnan(teacher), -math.inf, teacher)
    p = teacher.exp()
    log_p = torch.where(p > 0, teacher, 0.0)  # 0·(−inf) would be NaN
    p_rest = (1.0 - p.sum(-1)).clamp(min=0.0)
    top = (p * (log_p - log_q)).sum(-1)
    rest = torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest
    return top + rest


def topk_forward_kl(
    student_logits: Tensor, teacher_topk_idx: Tensor, teacher_topk_logprobs: Tensor, mask: Tensor
) -> Tensor:
    """Forward KL from teacher to student, averaged over response tokens: [B].

    Args:
        student_logits: [B, T, V] student logits at the response positions.
        teacher_topk_idx: [B, T, K] vocabulary indices of the teacher's top-k tokens.
        teacher_topk_logprobs: [B, T, K] teacher log-probs of those tokens (full-vocabulary softmax, not
            renormalised over the top-k: the remainder becomes the "other" bucket).
        mask: [B, T] response-token mask.
    """
    kl = topk_forward_kl_tokens(student_logits, teacher_topk_idx, teacher_topk_logprobs)
    return _masked_token_mean(kl, mask)


def dckd_loss(
    student_chosen_logits: Tensor,
    chosen_labels: Tensor,
    chosen_mask: Tensor,
    teacher_chosen_idx: Tensor,
    teacher_chosen_logprobs: Tensor,
    student_rejected_logits: Tensor | None = None,
    rejected_mask: Tensor | None = None,
    teacher_rejected_idx: Tensor | None = None,
    teacher_rejected_logprobs: Tensor | None = None,
    *,
    sft_weight: float = 0.0,
    distill_weight: float = 0.0,
    chosen_weight: float = 0.0,
    rejected_weight: float = 0.0,
) -> ObjectiveOutput:
    """Per-example DCKD loss w_sft·NLL(y_w) + w_distill·(w_c·KL_w + w_r·KL_l), shape [B].

    The teacher is the DPO teacher π_dpo^T. The rejected-side tensors may be None when
    ``rejected_weight`` is 0 (saves a student forward pass). Weight defaults mirror the reference
    trainer (``sft_on_chosen``, ``distillation_weight``, ``chosen_distil_weight``,
    ``rejected_distil_weight``, all 0); the recipe values are unknown, so pick them explicitly.

    Metrics: ``loss/chosen-sft``, ``loss/chosen-fkl``, ``loss/rejected-fkl`` (when given),
    ``logps/chosen`` (summed student log-prob of y_w).
    """
    _require_weights("dckd_loss", sft_weight=sft_weight, distill_x_chosen=distill_weight * chosen_weight,
                     distill_x_rejected=distill_weight * rejected_weight)
    token_logps = _label_logps(student_chosen_logits, chosen_labels, chosen_mask)
    nll = -_masked_token_mean(token_logps, chosen_mask)
    kl_w = topk_forward_kl(student_chosen_logits, teacher_chosen_idx, teacher_chosen_logprobs, chosen_mask)
    loss = sft_weight * nll + distill_weight * chosen_weight * kl_w
    metrics = {
        "loss/chosen-sft": mean(nll.detach()),
        "loss/chosen-fkl": mean(kl_w.detach()),
        "logps/chosen": mean(token_logps.detach().sum(-1)),
    }
    if student_rejected_logits is not None:
        if rejected_mask is None or teacher_rejected_idx is None or teacher_rejected_logprobs is None:
            raise ValueError("dckd_loss: rejected logits need rejected_mask and the teacher's rejected top-k")
        kl_l = topk_forward_kl(student_rejected_logits, teacher_rejected_idx, teacher_rejected_logprobs,
                               rejected_mask)
        loss = loss + distill_weight * rejected_weight * kl_l
        metrics["loss/rejected-fkl"] = mean(kl_l.detach())
    elif rejected_weight != 0 and distill_weight != 0:
        raise ValueError("dckd_loss: rejected_weight > 0 needs the rejected student logits and teacher top-k")
    return ObjectiveOutput(loss=loss, metrics=metrics)


# ---------------------------------------------------------------------------------------------- ADPA


def adpa_loss(
    student_logits: Tensor,
    sampled_labels: Tensor,
    sampled_mask: Tensor,
    support_idx: Tensor,
    dpo_teacher_logprobs: Tensor,
    ref_teacher_logprobs: Tensor,
    *,
    support_mask: Tensor | None = None,
    adpa_weight: float = 0.0,
    sft_weight: float = 0.0,
    chosen_logits: Tensor | None = None,
    chosen_labels: Tensor | None = None,
    chosen_mask: Tensor | None = None,
    importance_sampling: bool = False,
    ref_student_sampled_logps: Tensor | None = None,
    kl_penalty_weight: float = 0.0,
) -> ObjectiveOutput:
    """Per-example ADPA loss w_sft·NLL(y_w) + w_adpa·L_ADPA [· IS weight] + w_kl·KL-penalty, shape [B].

    Args:
        student_logits: [B, T, V] student logits on (x, y^S), y^S sampled from the (SFT or DCKD) student.
        sampled_labels: [B, T] the y^S tokens (for log π_θ(y^S|x)).
        sampled_mask: [B, T] response-token mask of y^S.
        support_idx: [B, T, K] vocabulary indices where the advantage is defined (teacher top-k; see
            :func:`merge_teacher_topk` when the two teachers' top-k sets differ).
        dpo_teacher_logprobs, ref_teacher_logprobs: [B, T, K] log π_dpo^T and log π_ref^T on the support.
            Use the *teacher's* SFT model for the reference (the README's student path is a copy error).
        support_mask: [B, T, K] bool; False entries (padding, duplicates) are left out of Σ_v.
        adpa_weight, sft_weight, kl_penalty_weight: term weights (trainer defaults 0).
        chosen_logits, chosen_labels, chosen_mask: the dataset's chosen y_w, needed when sft_weight > 0.
        importance_sampling: multiply L_ADPA by exp(log π_θ(y^S|x) − log π_ref^S(y^S|x)) as the reference
            trainer does (not detached there, nor here; summed log-probs, so it can overflow far from the
            reference student).
        ref_student_sampled_logps: [B] summed log π_ref^S(y^S|x) of the student's starting checkpoint;
            needed for importance sampling and the KL penalty.

    Metrics: ``loss/adpa``, ``loss/importance_weight``, ``loss/kl-penalty``, ``loss/chosen-sft`` (each
    when its term is active), ``logps/sampled`` (summed student log-prob of y^S).
    """
    _require_weights("adpa_loss", adpa_weight=adpa_weight, sft_weight=sft_weight,
                     kl_penalty_weight=kl_penalty_weight)
    needs_ref = importance_sampling or kl_penalty_weight != 0
    if needs_ref and ref_student_sampled_logps is None:
        raise ValueError("adpa_loss: importance sampling and the KL penalty need ref_student_sampled_logps")

    probs = student_logits.float().softmax(-1).gather(-1, support_idx.long().clamp(min=0))
    advantage = teacher_advantage(dpo_teacher_logprobs, ref_teacher_logprobs)
    keep = torch.isfinite(advantage)
    if support_mask is not None:
        keep = keep & support_mask.bool()
    # Zero the advantage itself, not the product: a NaN factor would poison the gradient through where().
    advantage = torch.where(keep, advantage, 0.0)
    expected_advantage = (probs * advantage).sum(-1)
    adpa = -_masked_token_mean(expected_advantage, sampled_mask)

    sampled_logps = _label_logps(student_logits, sampled_labels, sampled_mask).sum(-1)
    metrics: dict[str, Tensor] = {"loss/adpa": mean(adpa.detach()),
                                  "logps/sampled": mean(sampled_logps.detach())}
    if importance_sampling:
        weight = torch.exp(sampled_logps - ref_student_sampled_logps.float())
        adpa = adpa * weight
        metrics["loss/importance_weight"] = mean(weight.detach())
    loss = adpa_weight * adpa

    if kl_penalty_weight != 0:
        kl_penalty = ref_student_sampled_logps.float() - sampled_logps
        loss = loss + kl_penalty_weight * kl_penalty
        metrics["loss/kl-penalty"] = mean(kl_penalty.detach())
    if sft_weight != 0:
        if chosen_logits is None or chosen_labels is None or chosen_mask is None:
            raise ValueError("adpa_loss: sft_weight > 0 needs chosen_logits, chosen_labels and chosen_mask")
        nll = -_masked_token_mean(_label_logps(chosen_logits, chosen_labels, chosen_mask), chosen_mask)
        loss = loss + sft_weight * nll
        metrics["loss/chosen-sft"] = mean(nll.detach())
    return ObjectiveOutput(loss=loss, metrics=metrics)
