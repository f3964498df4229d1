"""DPO-family objectives: hand-computed values, edge cases, and agreement with TRL 1.16's own loss code."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.objectives import OBJECTIVES, PairLogps, get_objective

from .trl_harness import trl_cpo, trl_dpo, trl_orpo


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def close(actual: torch.Tensor, expected: float | list[float], tol: float = 1e-6) -> None:
    expected_t = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected_t, atol=tol, rtol=tol)


def pair(ref: bool = True) -> PairLogps:
    # h(y_w) = [1, -2], h(y_l) = [-1, 1], so Δ = [2, -3]: one pair ranked right, one wrong.
    return PairLogps(chosen=t(-10, -20), rejected=t(-12, -15), chosen_tokens=t(5, 4), rejected_tokens=t(3, 6),
                     ref_chosen=t(-11, -18) if ref else None, ref_rejected=t(-11, -16) if ref else None)


def run(name: str, p: PairLogps, **kw: object):
    return get_objective(name).fn(p, **kw)


# ------------------------------------------------------------------------------------- registry / contract


def test_registry_flags() -> None:
    expected = {"dpo": True, "robust_dpo": True, "ipo": True, "hinge": True, "rpo": True, "slic": False,
                "orpo": False, "simpo": False, "sft": False}
    for name, needs_ref in expected.items():
        spec = OBJECTIVES[name]
        assert (spec.inputs, spec.needs_reference, spec.stateful) == ("pair", needs_ref, False), name


@pytest.mark.parametrize("name", ["dpo", "robust_dpo", "ipo", "hinge", "rpo"])
def test_reference_based_objectives_demand_reference(name: str) -> None:
    with pytest.raises(ValueError, match="needs reference"):
        run(name, pair(ref=False))


@pytest.mark.parametrize("name", ["slic", "orpo", "simpo", "sft"])
def test_reference_free_objectives_ignore_reference(name: str) -> None:
    close(run(name, pair(ref=False)).loss, run(name, pair(ref=True)).loss.tolist())


# ------------------------------------------------------------------------------------------ hand values


def test_dpo_hand_values_and_metrics() -> None:
    out = run("dpo", pair())
    close(out.loss, [-logsig(0.2), -logsig(-0.3)])
    m = out.metrics
    close(m["rewards/chosen"], (0.1 - 0.2) / 2)
    close(m["rewards/rejected"], (-0.1 + 0.1) / 2)
    close(m["rewards/margins"], (0.2 - 0.3) / 2)
    close(m["rewards/accuracies"], 0.5)
    close(m["logps/chosen"], -15.0)
    close(m["logps/rejected"], -13.5)
    assert "logits/chosen" not in m


def test_dpo_equal_logps_is_log2() -> None:
    x = t(-7, -3)
    p = PairLogps(chosen=x, rejected=x, chosen_tokens=t(2, 2), rejected_tokens=t(2, 2),
                  ref_chosen=x, ref_rejected=x)
    close(run("dpo", p).loss, [math.log(2)] * 2)


def test_dpo_label_smoothing_is_cdpo() -> None:
    out = run("dpo", pair(), beta=0.5, label_smoothing=0.1)
    close(out.loss, [-0.9 * logsig(z) - 0.1 * logsig(-z) for z in (1.0, -1.5)])
    with pytest.raises(ValueError):
        run("dpo", pair(), label_smoothing=0.6)


def test_robust_dpo_hand_values() -> None:
    eps = 0.2
    out = run("robust_dpo", pair(), label_smoothing=eps)
    close(out.loss, [(-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps) for z in (0.2, -0.3)])
    close(run("robust_dpo", pair()).loss, run("dpo", pair()).loss.tolist())
    with pytest.raises(ValueError):
        run("robust_dpo", pair(), label_smoothing=0.5)


def test_ipo_uses_per_token_log_ratios() -> None:
    out = run("ipo", pair())
    margins = [1 / 5 - (-1 / 3), -2 / 4 - 1 / 6]  # h/|y| with chosen tokens (5, 4), rejected (3, 6)
    close(out.loss, [(d - 5.0) ** 2 for d in margins], tol=1e-5)
    close(out.metrics["ipo/margin"], sum(margins) / 2)
    close(out.metrics["ipo/margin_target"], 5.0)
    close(out.metrics["rewards/chosen"], (0.1 - 0.2) / 2)  # TRL keeps summed log-ratios for rewards


def test_hinge_hand_values() -> None:
    out = run("hinge", pair())
    close(out.loss, [1 - 0.2, 1 + 0.3])
    close(out.metrics["hinge_active_fraction"], 1.0)
    out = run("hinge", pair(), beta=1.0)
    close(out.loss, [0.0, 4.0])
    close(out.metrics["hinge_active_fraction"], 0.5)


def test_slic_hand_values() -> None:
    out = run("slic", pair(ref=False))
    # raw margins log π(y+) - log π(y-) = [2, -5]; token-mean NLL(y+) = [10/5, 20/4]
    close(out.loss, [max(0.0, 1 - 2) + 0.5 * 2.0, max(0.0, 1 + 5) + 0.5 * 5.0])
    close(out.metrics["hinge_active_fraction"], 0.5)
    close(out.metrics["nll"], 3.5)
    close(out.metrics["logp_margin"], -1.5)
    close(run("slic", pair(ref=False), delta=3.0, nll_weight=0.0).loss, [1.0, 8.0])


def test_rpo_hand_values() -> None:
    dpo_terms = [-logsig(0.2), -logsig(-0.3)]
    out = run("rpo", pair())
    close(out.loss, [d + 1.0 * 0.1 * nll for d, nll in zip(dpo_terms, (2.0, 5.0), strict=True)])
    close(out.metrics["nll"], 3.5)
    out = run("rpo", pair(), eta=2.0, nll_reduction="sum")
    close(out.loss, [d + 2.0 * 0.1 * nll for d, nll in zip(dpo_terms, (10.0, 20.0), strict=True)])
    with pytest.raises(ValueError):
        run("rpo", pair(), nll_reduction="max")


def _orpo_pair() -> PairLogps:
    # mean log-probs: chosen (-0.5, -5), rejected (-2, -0.5)
    return PairLogps(chosen=t(-2, -20), rejected=t(-6, -3), chosen_tokens=t(4, 4), rejected_tokens=t(3, 6))


def test_orpo_hand_values() -> None:
    out = run("orpo", _orpo_pair())
    log_odds = [(w - r) - (math.log(1 - math.exp(w)) - math.log(1 - math.exp(r)))
                for w, r in ((-0.5, -2), (-5, -0.5))]
    close(out.loss, [0.5 - 0.1 * logsig(log_odds[0]), 5.0 - 0.1 * logsig(log_odds[1])], tol=1e-5)
    close(out.metrics["log_odds_chosen"], sum(log_odds) / 2, tol=1e-5)
    close(out.metrics["nll_loss"], 2.75)
    close(out.metrics["logps/chosen"], -2.75)  # mean log-probs, as TRL logs them for ORPO
    close(out.metrics["rewards/chosen"], 0.1 * -2.75)


def test_simpo_hand_values() -> None:
    # defaults of SimPOConfig in princeton-nlp/SimPO: β = 2, γ/β = 0.25, so γ = 0.5
    out = run("simpo", _orpo_pair())  # logits 2·1.5 - 0.5 = 2.5 and 2·(-4.5) - 0.5 = -9.5
    close(out.loss, [-logsig(2.5), -logsig(-9.5)])
    close(out.metrics["rewards/accuracies"], 0.5)
    out = run("simpo", _orpo_pair(), beta=1.0, gamma_beta_ratio=0.2, label_smoothing=0.1)
    close(out.loss, [-0.9 * logsig(z) - 0.1 * logsig(-z) for z in (1.5 - 0.2, -4.5 - 0.2)])


def test_logits_metrics_are_token_weighted() -> None:
    p = pair()
    p.chosen_logits_mean, p.rejected_logits_mean = t(1.0, 4.0), t(2.0, -1.0)
    m = run("dpo", p).metrics
    close(m["logits/chosen"], (1.0 * 5 + 4.0 * 4) / 9)
    close(m["logits/rejected"], (2.0 * 3 - 1.0 * 6) / 9)


# ------------------------------------------------------------------------------------------- extremes


PAIR_OBJECTIVES = ["dpo", "robust_dpo", "ipo", "hinge", "slic", "rpo", "orpo", "simpo", "sft", "bco_pair"]


@pytest.mark.parametrize("name", PAIR_OBJECTIVES)
def test_large_margins_stay_finite(name: str) -> None:
    chosen = t(-1e4, -1.0, 0.0, -1e4).requires_grad_()
    rejected = t(-1.0, -1e4, -1e4, 0.0).requires_grad_()
    p = PairLogps(chosen=chosen, rejected=rejected, chosen_tokens=t(1, 1, 3, 1),
                  rejected_tokens=t(1, 1, 1, 0), ref_chosen=t(-1, -1, -1, -1), ref_rejected=t(-1, -1, -1, -1))
    kw = {"state": {}} if OBJECTIVES[name].stateful else {}
    kw |= {"label_smoothing": 0.1} if name in ("dpo", "robust_dpo", "simpo") else {}
    out = run(name, p, **kw)
    assert torch.isfinite(out.loss).all(), out.loss
    assert all(torch.isfinite(v).all() for v in out.metrics.values()), out.metrics
    out.loss.sum().backward()
    grads = [x.grad for x in (chosen, rejected) if x.grad is not None]  # sft ignores the rejected side
    assert grads and all(torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------------- cross-checks vs TRL


SHARED = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
          "logps/rejected", "logits/chosen", "logits/rejected"]


@pytest.fixture
def batch() -> PairLogps:
    g = torch.Generator().manual_seed(0)
    ct, rt = t(3, 7, 1, 12, 5, 2), t(5, 2, 9, 4, 5, 8)
    chosen = -ct * (0.5 + 2 * torch.rand(6, generator=g))
    rejected = -rt * (0.5 + 2 * torch.rand(6, generator=g))
    return PairLogps(chosen=chosen, rejected=rejected, chosen_tokens=ct, rejected_tokens=rt,
                     ref_chosen=chosen + torch.randn(6, generator=g) * 3,
                     ref_rejected=rejected + torch.randn(6, generator=g) * 3,
                     chosen_logits_mean=torch.randn(6, generator=g),
                     rejected_logits_mean=torch.randn(6, generator=g))


def assert_metrics_match(ours: dict[str, torch.Tensor], theirs: dict[str, float], names: list[str]) -> None:
    for name in names:
        close(ours[name], theirs[name], tol=1e-5)


@pytest.mark.parametrize(("name", "trl_type", "kw"), [
    ("dpo", "sigmoid", {}),
    ("robust_dpo", "robust", {"label_smoothing": 0.2}),
    ("ipo", "ipo", {}),
    ("hinge", "hinge", {}),
    ("bco_pair", "bco_pair", {"state": {}, "use_running_delta": False}),
])
def test_matches_trl_dpo_trainer(batch: PairLogps, name: str, trl_type: str, kw: dict) -> None:
    beta = 0.3
    out = run(name, batch, beta=beta, **kw)
    smoothing = kw.get("label_smoothing", 0.0)
    trl_loss, trl_metrics = trl_dpo(batch, [trl_type], beta=beta, label_smoothing=smoothing)
    close(out.loss.mean(), float(trl_loss))
    assert_metrics_match(out.metrics, trl_metrics, SHARED)
    # Guard against a vacuous match: TRL with another β must disagree on these inputs.
    other, _ = trl_dpo(batch, [trl_type], beta=2 * beta, label_smoothing=smoothing)
    assert abs(float(other) - float(out.loss.mean())) > 1e-3


def test_ipo_length_normalisation_matters_for_trl_match(batch: PairLogps) -> None:
    trl_loss, _ = trl_dpo(batch, ["ipo"])
    ones = torch.ones(6)
    unnormalised = PairLogps(**{**batch.__dict__, "chosen_tokens": ones, "rejected_tokens": ones})
    assert abs(float(run("ipo", unnormalised).loss.mean()) - float(trl_loss)) > 1e-2


def test_dpo_label_smoothing_matches_trl_cdpo_sigmoid(batch: PairLogps) -> None:
    # TRL 1.16's DPOTrainer no longer smooths "sigmoid"; CPOTrainer's "sigmoid" keeps the cDPO form on the
    # difference of whatever log-probs it gets, so feeding it the log-ratios h(y) gives DPO's cDPO loss.
    ones = torch.ones(6)
    ratios = PairLogps(chosen=batch.chosen - batch.ref_chosen, rejected=batch.rejected - batch.ref_rejected,
                       chosen_tokens=ones, rejected_tokens=ones)
    for eps in (0.0, 0.15):
        trl_losses, _ = trl_cpo(ratios, beta=0.3, simpo_gamma=0.0, label_smoothing=eps, loss_type="sigmoid")
        close(run("dpo", batch, beta=0.3, label_smoothing=eps).loss, trl_losses.tolist())


def test_rpo_matches_trl_sigmoid_plus_sft(batch: PairLogps) -> None:
    # TRL's "sft" term averages over all chosen tokens of the batch; with equal lengths that equals
    # alignkit's per-example token mean.
    same = PairLogps(**{**batch.__dict__, "chosen_tokens": torch.full((6,), 4.0)})
    beta, eta = 0.2, 1.5
    out = run("rpo", same, beta=beta, eta=eta)
    trl_loss, trl_metrics = trl_dpo(same, ["sigmoid", "sft"], [1.0, eta * beta], beta=beta)
    close(out.loss.mean(), float(trl_loss))
    assert_metrics_match(out.metrics, trl_metrics, SHARED)
    other, _ = trl_dpo(same, ["sigmoid", "sft"], [1.0, 2 * eta * beta], beta=beta)
    assert abs(float(other) - float(out.loss.mean())) > 1e-3


# TRL's CPO/ORPO "logits/*" average the raw logits tensor (padding included), which has no log-prob analogue.
REFERENCE_FREE_SHARED = SHARED[:6]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo(batch: PairLogps, smoothing: float) -> None:
    beta, ratio = 2.0, 0.5
    out = run("simpo", batch, beta=beta, gamma_beta_ratio=ratio, label_smoothing=smoothing)
    trl_losses, trl_metrics = trl_cpo(batch, beta=beta, simpo_gamma=ratio * beta, label_smoothing=smoothing)
    close(out.loss, trl_losses.tolist())
    close(out.loss.mean(), trl_metrics["loss"])
    assert_metrics_match(out.metrics, trl_metrics, REFERENCE_FREE_SHARED)
    # γ must be ratio·β, not the ratio itself: TRL fed simpo_gamma = ratio disagrees.
    wrong, _ = trl_cpo(batch, beta=beta, simpo_gamma=ratio, label_smoothing=smoothing)
    assert (wrong - out.loss).abs().max() > 1e-3


def test_orpo_matches_trl(batch: PairLogps) -> None:
    out = run("orpo", batch, beta=0.25)
    nll = out.metrics["nll_loss"]
    trl_ratio_term, trl_metrics = trl_orpo(batch, nll, beta=0.25)
    per_example_nll = -batch.chosen / batch.chosen_tokens
    close(out.loss - per_example_nll, (-trl_ratio_term).tolist())
    close(out.loss.mean(), trl_metrics["loss"])
    assert_metrics_match(out.metrics, trl_metrics,
                         REFERENCE_FREE_SHARED + ["nll_loss", "log_odds_ratio", "log_odds_chosen"])
    other, _ = trl_orpo(batch, nll, beta=0.5)
    assert (other - trl_ratio_term).abs().max() > 1e-3
