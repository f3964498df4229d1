"""MAH-DPO (arXiv 2510.01167): the vector-preference loss by hand, and the multi-head wrapper on a tiny Llama."""

import math

import pytest
import torch

from alignkit.models import load_tokenizer, tiny_llama
from alignkit.objectives.mah_dpo import MultiHeadLM, mah_dpo_loss

PC = [[-1.0, -4.0, -2.0], [-3.0, -1.0, -2.0]]
PR = [[-2.0, -3.0, -2.5], [-1.0, -2.0, -5.0]]
RC = [[-1.5, -3.0, -2.0], [-2.0, -1.0, -1.0]]
RR = [[-1.5, -3.5, -2.0], [-2.0, -1.5, -4.0]]
PREF = [[1, -1, 0], [0, 0, 1]]


def hand_pair_loss(k, b, beta):
    margin = (PC[k][b] - RC[k][b]) - (PR[k][b] - RR[k][b])
    return -math.log(1 / (1 + math.exp(-beta * PREF[k][b] * margin)))


def inputs(requires_grad=False):
    t = [torch.tensor(x, requires_grad=requires_grad) for x in (PC, PR)]
    return t[0], t[1], torch.tensor(RC), torch.tensor(RR), torch.tensor(PREF)


def test_loss_is_mean_over_present_objectives_of_per_objective_means():
    beta = 0.5
    out = mah_dpo_loss(*inputs(), beta=beta)
    l00, l01, l12 = hand_pair_loss(0, 0, beta), hand_pair_loss(0, 1, beta), hand_pair_loss(1, 2, beta)
    objective = ((l00 + l01) / 2 + l12) / 2
    assert out.loss.mean().item() == pytest.approx(objective, rel=1e-5)
    # Per example: ℓ·B/(n_k·K_present) with B = 3, n_0 = 2, n_1 = 1, K_present = 2.
    assert out.loss.tolist() == pytest.approx([l00 * 3 / 4, l01 * 3 / 4, l12 * 3 / 2], rel=1e-5)

    m = out.metrics
    assert m["objectives_present"].item() == 2
    assert m["head0/loss"].item() == pytest.approx((l00 + l01) / 2, rel=1e-5)
    assert m["head1/loss"].item() == pytest.approx(l12, rel=1e-5)
    assert m["head0/count"].item() == 2 and m["head1/count"].item() == 1
    # head 0, example 1 prefers the second response: its winner reward is β·h(second) = 0.5·0.5.
    assert m["head0/rewards/chosen"].item() == pytest.approx((0.5 * 0.5 + 0.5 * 0.5) / 2)
    assert m["head0/rewards/rejected"].item() == pytest.approx((0.5 * -0.5 + 0.5 * -1.0) / 2)
    assert m["head0/rewards/accuracies"].item() == 1.0
    assert m["head1/rewards/margins"].item() == pytest.approx(0.5 * (-1.0 - -1.0))


def test_zero_preference_contributes_nothing():
    pc, pr, rc, rr, pref = inputs(requires_grad=True)
    out = mah_dpo_loss(pc, pr, rc, rr, pref)
    out.loss.sum().backward()
    assert pc.grad[0, 2] == 0 and pc.grad[1, 0] == 0 and pc.grad[1, 1] == 0
    assert torch.isfinite(pc.grad).all() and pc.grad[0, 0] < 0  # winner pushed up

    shifted = torch.tensor(PC)
    shifted[0, 2] -= 100.0
    shifted[1, :2] += 100.0
    assert mah_dpo_loss(shifted, *inputs()[1:]).loss.tolist() == pytest.approx(out.loss.tolist())


def test_no_labels_and_extremes_stay_finite():
    pc, pr, rc, rr, _ = inputs()
    out = mah_dpo_loss(pc, pr, rc, rr, torch.zeros(2, 3))
    assert out.loss.tolist() == [0.0, 0.0, 0.0]
    assert all(torch.isfinite(v) for v in out.metrics.values())
    big = torch.tensor([[1e6, -1e6, 0.0]] * 2, requires_grad=True)
    out = mah_dpo_loss(big, -big, rc, rr, torch.tensor([[1, 1, -1], [-1, 1, 1]]))
    assert torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert torch.isfinite(big.grad).all()


# ---------------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(log=lambda *a: None)


@pytest.fixture(scope="module")
def ids(tok):
    return tok(["Be helpful and honest.", "Two plus two"], return_tensors="pt", padding=True)


def test_head_initialisation(tok):
    lm = tiny_llama(tok)
    plain = MultiHeadLM(lm, num_heads=3)
    assert plain.heads[0] is lm.lm_head
    for head in plain.heads[1:]:
        assert torch.equal(head.weight, lm.lm_head.weight)
        assert head.weight.data_ptr() != lm.lm_head.weight.data_ptr()

    noisy_a = MultiHeadLM(tiny_llama(tok), num_heads=3, perturbation_scale=0.01, seed=7)
    noisy_b = MultiHeadLM(tiny_llama(tok), num_heads=3, perturbation_scale=0.01, seed=7)
    assert torch.equal(noisy_a.heads[0].weight, lm.lm_head.weight)  # head 0 is never perturbed
    assert torch.equal(noisy_a.heads[1].weight, noisy_b.heads[1].weight)  # policy and reference agree
    assert not torch.equal(noisy_a.heads[1].weight, noisy_a.heads[2].weight)
    delta = noisy_a.heads[1].weight - lm.lm_head.weight
    assert delta.std().item() == pytest.approx(0.01, rel=0.05)


def test_forward_weighting_and_ensemble_head(tok, ids):
    lm = tiny_llama(tok).eval()
    model = MultiHeadLM(lm, num_heads=3, perturbation_scale=0.05)
    with torch.no_grad():
        logits = model(ids.input_ids, ids.attention_mask)
        assert logits.shape == (3, 2, ids.input_ids.shape[1], len(tok))
        torch.testing.assert_close(logits[0], lm(**ids).logits, atol=1e-5, rtol=1e-5)

        hidden = model.hidden_states(ids.input_ids, ids.attention_mask)
        torch.testing.assert_close(model.head_logits(hidden, [1, 0, 0]), logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.head_logits(hidden), logits.mean(0), atol=1e-5, rtol=1e-5)
        weighted = (2 * logits[0] + logits[1] + logits[2]) / 4
        torch.testing.assert_close(model.head_logits(hidden, [2, 1, 1]), weighted, atol=1e-5, rtol=1e-5)

        original = lm.lm_head
        with model.ensemble_head([2, 1, 1]):
            torch.testing.assert_close(lm(**ids).logits, weighted, atol=1e-5, rtol=1e-5)
            out = lm.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
            assert out.shape[1] == ids.input_ids.shape[1] + 2
        assert lm.lm_head is original
    with pytest.raises(ValueError):
        model.head_logits(hidden, [1, 1])


def test_head_token_logps_and_gradients_reach_the_backbone(tok, ids):
    model = MultiHeadLM(tiny_llama(tok), num_heads=2, perturbation_scale=0.05)
    hidden = model.hidden_states(ids.input_ids, ids.attention_mask)[:, :-1]
    labels = ids.input_ids[:, 1:].masked_fill(ids.attention_mask[:, 1:] == 0, -100)
    logps = model.head_token_logps(hidden, labels)
    assert logps.shape == (2, *labels.shape)
    with torch.no_grad():
        full = model(ids.input_ids, ids.attention_mask)[:, :, :-1].log_softmax(-1)
    expected = full.gather(-1, labels.clamp(min=0)[None, ..., None].expand(2, -1, -1, 1)).squeeze(-1)
    expected = torch.where(labels >= 0, expected, 0.0)
    torch.testing.assert_close(logps.detach(), expected, atol=1e-5, rtol=1e-5)

    logps[1].sum().backward()  # head 1 only
    layer = model.lm.model.layers[0].mlp.up_proj.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0
    assert model.extra_heads[0].weight.grad.abs().sum() > 0
