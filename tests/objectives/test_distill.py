"""DCKD and ADPA (Gao et al., ICLR 2025, arXiv 2502.17927) against hand-computed values."""

import math

import pytest
import torch

from alignkit.objectives.distill import adpa_loss, dckd_loss, merge_teacher_topk, topk_forward_kl

LN = math.log


def softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


# Two positions, V = 4. Position 0: student logits 0..3, teacher top-2 {3: 0.5, 2: 0.3}, bucket 0.2.
# Position 1: student logits 3..0, teacher top-2 {0: 0.7, 1: 0.2}, bucket 0.1.
LOGITS = [[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]
IDX = [[3, 2], [0, 1]]
PROBS = [[0.5, 0.3], [0.7, 0.2]]


def hand_kl(logits, idx, probs):
    q = softmax(logits)
    rest_p = 1 - sum(probs)
    rest_q = 1 - sum(q[i] for i in idx)
    kl = sum(p * LN(p / q[i]) for i, p in zip(idx, probs, strict=True) if p > 0)
    return kl + (rest_p * LN(rest_p / rest_q) if rest_p > 0 else 0.0)


def tensors():
    logits = torch.tensor([LOGITS, LOGITS])
    idx = torch.tensor([IDX, IDX])
    logprobs = torch.tensor([PROBS, PROBS]).log()
    return logits, idx, logprobs


def test_topk_forward_kl_uses_a_remaining_mass_bucket():
    logits, idx, logprobs = tensors()
    mask = torch.tensor([[1, 1], [1, 0]])
    kl = topk_forward_kl(logits, idx, logprobs, mask)
    k0 = hand_kl(LOGITS[0], IDX[0], PROBS[0])
    k1 = hand_kl(LOGITS[1], IDX[1], PROBS[1])
    assert kl.tolist() == pytest.approx([(k0 + k1) / 2, k0], rel=1e-5)


def test_full_vocabulary_top_k_is_the_exact_kl():
    teacher = [0.1, 0.2, 0.3, 0.4]
    q = softmax(LOGITS[0])
    exact = sum(p * LN(p / qi) for p, qi in zip(teacher, q, strict=True))
    kl = topk_forward_kl(torch.tensor([[LOGITS[0]]]), torch.tensor([[[0, 1, 2, 3]]]),
                         torch.tensor([[teacher]]).log(), torch.ones(1, 1))
    assert kl.item() == pytest.approx(exact, rel=1e-5)


def test_student_probs_are_clamped_and_teacher_padding_is_ignored():
    logits = torch.tensor([[[-100.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    kl = topk_forward_kl(logits, torch.tensor([[[0]]]), torch.tensor([[[LN(0.5)]]]), torch.ones(1, 1))
    assert kl.item() == pytest.approx(0.5 * LN(0.5 / 1e-7) + 0.5 * LN(0.5 / 1.0), rel=1e-5)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()

    # A −inf teacher entry has p = 0: it adds nothing, and its index is its own (empty) bucket.
    logits = torch.tensor([[LOGITS[0]]], requires_grad=True)
    kl = topk_forward_kl(logits, torch.tensor([[[3, 0]]]), torch.tensor([[[LN(0.9), -math.inf]]]),
                         torch.ones(1, 1))
    q = softmax(LOGITS[0])
    assert kl.item() == pytest.approx(0.9 * LN(0.9 / q[3]) + 0.1 * LN(0.1 / (q[1] + q[2])), rel=1e-5)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_dckd_combines_sft_and_dual_kl():
    logits, idx, logprobs = tensors()
    chosen_logits, chosen_labels = logits[:1], torch.tensor([[3, 0]])
    rejected_logits = torch.tensor([[[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.ones(1, 2)
    out = dckd_loss(chosen_logits, chosen_labels, mask, idx[:1], logprobs[:1],
                    rejected_logits, mask, idx[:1], logprobs[:1],
                    sft_weight=0.5, distill_weight=2.0, chosen_weight=1.0, rejected_weight=0.25)
    nll = -(LN(softmax(LOGITS[0])[3]) + LN(softmax(LOGITS[1])[0])) / 2
    kl_w = (hand_kl(LOGITS[0], IDX[0], PROBS[0]) + hand_kl(LOGITS[1], IDX[1], PROBS[1])) / 2
    kl_l = (hand_kl([1.0, 0.0, 0.0, 2.0], IDX[0], PROBS[0]) + hand_kl([0.0] * 4, IDX[1], PROBS[1])) / 2
    assert out.loss.item() == pytest.approx(0.5 * nll + 2.0 * (kl_w + 0.25 * kl_l), rel=1e-5)
    assert out.metrics["loss/chosen-sft"].item() == pytest.approx(nll, rel=1e-5)
    assert out.metrics["loss/chosen-fkl"].item() == pytest.approx(kl_w, rel=1e-5)
    assert out.metrics["loss/rejected-fkl"].item() == pytest.approx(kl_l, rel=1e-5)
    assert out.metrics["logps/chosen"].item() == pytest.approx(-2 * nll, rel=1e-5)


def test_dckd_refuses_all_zero_weights_and_missing_rejected_side():
    logits, idx, logprobs = tensors()
    labels, mask = torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2)
    with pytest.raises(ValueError, match="weight 0"):
        dckd_loss(logits, labels, mask, idx, logprobs)
    with pytest.raises(ValueError, match="weight 0"):
        dckd_loss(logits, labels, mask, idx, logprobs, distill_weight=1.0)
    with pytest.raises(ValueError, match="rejected"):
        dckd_loss(logits, labels, mask, idx, logprobs, distill_weight=1.0, rejected_weight=1.0)
    out = dckd_loss(logits, labels, mask, idx, logprobs, distill_weight=1.0, chosen_weight=1.0)
    assert "loss/rejected-fkl" not in out.metrics


# ADPA: V = 3, student q = [1/6, 2/6, 3/6] at both positions. Support {2, 0}:
# A = [ln .6 − ln .3, ln .1 − ln .2] = [ln 2, −ln 2]. Position 1 masks out the second support entry.
ADPA_LOGITS = [0.0, LN(2.0), LN(3.0)]


def adpa_inputs():
    logits = torch.tensor([[ADPA_LOGITS, ADPA_LOGITS]], requires_grad=True)
    idx = torch.tensor([[[2, 0], [2, 0]]])
    dpo = torch.tensor([[[0.6, 0.1], [0.6, 0.1]]]).log()
    ref = torch.tensor([[[0.3, 0.2], [0.3, 0.2]]]).log()
    support_mask = torch.tensor([[[True, True], [True, False]]])
    return logits, torch.tensor([[1, 2]]), torch.ones(1, 2), idx, dpo, ref, support_mask


def test_adpa_is_the_negative_expected_teacher_advantage():
    logits, labels, mask, idx, dpo, ref, support_mask = adpa_inputs()
    out = adpa_loss(logits, labels, mask, idx, dpo, ref, support_mask=support_mask, adpa_weight=1.0)
    expected = -((0.5 * LN(2) - LN(2) / 6) + 0.5 * LN(2)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["logps/sampled"].item() == pytest.approx(LN(2 / 6) + LN(3 / 6), rel=1e-5)
    out.loss.sum().backward()
    # Token 2 has positive advantage: raising its logit lowers the loss.
    assert logits.grad[0, 0, 2] < 0 and torch.isfinite(logits.grad).all()


def test_adpa_importance_weight_kl_penalty_and_sft():
    logits, labels, mask, idx, dpo, ref, support_mask = adpa_inputs()
    ref_student = torch.tensor([-2.0])
    chosen_logits = torch.tensor([[[0.0, 0.0, 0.0]]])
    out = adpa_loss(logits, labels, mask, idx, dpo, ref, support_mask=support_mask, adpa_weight=2.0,
                    importance_sampling=True, ref_student_sampled_logps=ref_student, kl_penalty_weight=0.1,
                    sft_weight=0.5, chosen_logits=chosen_logits, chosen_labels=torch.tensor([[1]]),
                    chosen_mask=torch.ones(1, 1))
    adpa = -((0.5 * LN(2) - LN(2) / 6) + 0.5 * LN(2)) / 2
    sampled = LN(2 / 6) + LN(3 / 6)
    weight = math.exp(sampled + 2.0)
    expected = 2.0 * adpa * weight + 0.1 * (-2.0 - sampled) + 0.5 * LN(3)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["loss/importance_weight"].item() == pytest.approx(weight, rel=1e-5)
    assert out.metrics["loss/kl-penalty"].item() == pytest.approx(-2.0 - sampled, rel=1e-5)
    assert out.metrics["loss/chosen-sft"].item() == pytest.approx(LN(3), rel=1e-5)


def test_adpa_guards_and_non_finite_teacher_entries():
    logits, labels, mask, idx, dpo, ref, _ = adpa_inputs()
    with pytest.raises(ValueError, match="weight 0"):
        adpa_loss(logits, labels, mask, idx, dpo, ref)
    with pytest.raises(ValueError, match="ref_student"):
        adpa_loss(logits, labels, mask, idx, dpo, ref, adpa_weight=1.0, importance_sampling=True)
    # −inf − (−inf) = NaN advantages are dropped from Σ_v, in the loss and in the gradient.
    dpo = dpo.clone()
    ref = ref.clone()
    dpo[0, 1, 1] = ref[0, 1, 1] = -math.inf
    out = adpa_loss(logits, labels, mask, idx, dpo, ref, adpa_weight=1.0)
    assert out.loss.item() == pytest.approx(-((0.5 * LN(2) - LN(2) / 6) + 0.5 * LN(2)) / 2, rel=1e-5)
    out.loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_merge_teacher_topk_unions_supports_with_per_teacher_floors():
    support, dpo, ref, keep = merge_teacher_topk(
        torch.tensor([[[5, 1]]]), torch.tensor([[[-0.5, -1.0]]]),
        torch.tensor([[[1, 7]]]), torch.tensor([[[-0.2, -3.0]]]))
    assert support.tolist() == [[[5, 1, 1, 7]]]
    assert keep.tolist() == [[[True, True, False, True]]]
    assert dpo.tolist() == [[[-0.5, -1.0, -1.0, -1.0]]]
    assert ref[0, 0].tolist() == pytest.approx([-3.0, -0.2, -0.2, -3.0])


def test_padded_positions_with_garbage_teacher_entries_stay_finite():
    logits, idx, logprobs = tensors()
    logits = logits.clone().requires_grad_(True)
    idx, logprobs = idx.clone(), logprobs.clone()
    idx[1, 1] = -1
    logprobs[1, 1] = float("nan")
    kl = topk_forward_kl(logits, idx, logprobs, torch.tensor([[1, 1], [1, 0]]))
    assert kl[1].item() == pytest.approx(hand_kl(LOGITS[0], IDX[0], PROBS[0]), rel=1e-5)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1, 1] == 0).all()
