"""SFT on chosen responses: hand values and agreement with TRL 1.16's DPOTrainer "sft" term."""

from __future__ import annotations

import pytest
import torch

from alignkit.objectives import OBJECTIVES, PairLogps, get_objective

from .trl_harness import trl_dpo


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_sft_is_per_example_token_mean_nll() -> None:
    p = PairLogps(chosen=t(-10, -3, -6), rejected=t(-1, -1, -1), chosen_tokens=t(5, 0, 4),
                  rejected_tokens=t(1, 1, 1), chosen_logits_mean=t(2.0, 0.0, -1.0))
    out = get_objective("sft").fn(p)
    torch.testing.assert_close(out.loss, t(2.0, 3.0, 1.5))  # an empty response counts as one token
    torch.testing.assert_close(out.metrics["nll"], torch.tensor(6.5 / 3))
    torch.testing.assert_close(out.metrics["logps/chosen"], torch.tensor(-19 / 3))
    torch.testing.assert_close(out.metrics["logits/chosen"], torch.tensor((2.0 * 5 + 0.0 * 0 - 1.0 * 4) / 9))
    assert not OBJECTIVES["sft"].needs_reference


def test_sft_gradient_only_touches_chosen() -> None:
    chosen, rejected = t(-10, -3).requires_grad_(), t(-1, -1).requires_grad_()
    out = get_objective("sft").fn(PairLogps(chosen=chosen, rejected=rejected, chosen_tokens=t(5, 2),
                                            rejected_tokens=t(1, 1)))
    out.loss.mean().backward()
    torch.testing.assert_close(chosen.grad, t(-1 / 10, -1 / 4))
    assert rejected.grad is None


@pytest.mark.parametrize("equal_lengths", [True, False])
def test_sft_against_trl_sft_term(equal_lengths: bool) -> None:
    tokens = t(4, 4, 4) if equal_lengths else t(2, 9, 4)
    p = PairLogps(chosen=t(-5, -20, -7), rejected=t(-3, -4, -6), chosen_tokens=tokens,
                  rejected_tokens=t(3, 2, 5), ref_chosen=t(-5, -20, -7), ref_rejected=t(-3, -4, -6))
    trl_loss, _ = trl_dpo(p, ["sft"])
    ours = get_objective("sft").fn(p).loss.mean()
    # TRL averages over all chosen tokens of the batch; alignkit averages per example, then over examples.
    torch.testing.assert_close(trl_loss, (-p.chosen.sum() / tokens.sum()), atol=1e-6, rtol=1e-6)
    if equal_lengths:
        torch.testing.assert_close(ours, trl_loss, atol=1e-6, rtol=1e-6)
    else:
        assert abs(float(ours) - float(trl_loss)) > 1e-2
