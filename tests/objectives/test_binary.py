"""KTO, BCO and paired BCO: hand-computed values, δ bookkeeping, and agreement with TRL 1.16 where it exists.

TRL 1.16 ships no BCOTrainer (and its DPOTrainer "bco_pair" dropped the running δ), so unpaired BCO and the
running-δ part of bco_pair are checked against hand-computed values only.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.objectives import OBJECTIVES, PairLogps, UnpairedLogps, get_objective
from alignkit.objectives.binary import fit_udm_classifier, udm_density_ratio

from .trl_harness import trl_kto


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def close(actual: torch.Tensor | float, expected: float | list[float], tol: float = 1e-6) -> None:
    actual = torch.as_tensor(actual, dtype=torch.float64)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=tol)


def unpaired(ref: tuple[float, ...] = (-6, -7, -4, -8), **kw: object) -> UnpairedLogps:
    # policy - ref = [1, -1, 1, -1] with labels [desirable, undesirable, desirable, undesirable]
    base = dict(policy=t(-5, -8, -3, -9), tokens=t(2, 3, 4, 5), label=torch.tensor([True, False, True, False]),
                ref=t(*ref), kl_policy=t(-5, -6, -7, -8), kl_ref=t(-5.5, -6.2, -6.9, -8.4))
    return UnpairedLogps(**{**base, **kw})


def test_registry_flags() -> None:
    assert (OBJECTIVES["kto"].inputs, OBJECTIVES["kto"].needs_reference, OBJECTIVES["kto"].stateful) == \
        ("unpaired", True, False)
    assert (OBJECTIVES["bco"].inputs, OBJECTIVES["bco"].stateful) == ("unpaired", True)
    assert (OBJECTIVES["bco_pair"].inputs, OBJECTIVES["bco_pair"].stateful) == ("pair", True)


# ------------------------------------------------------------------------------------------------- KTO


def test_kto_hand_values() -> None:
    out = get_objective("kto").fn(unpaired())
    z0 = (0.5 + 0.2 - 0.1 + 0.4) / 4  # mean(kl_policy - kl_ref) = 0.25 > 0
    des, und = 1 - sig(0.1 * (1 - z0)), 1 - sig(0.1 * (z0 + 1))
    close(out.loss, [des, und, des, und])
    m = out.metrics
    close(m["kl"], z0)
    close(m["rewards/chosen"], 0.1)
    close(m["rewards/rejected"], -0.1)
    close(m["rewards/margins"], 0.2)
    close(m["logps/chosen"], -4.0)
    close(m["logps/rejected"], -8.5)
    close(m["count/chosen"], 2.0)
    out = get_objective("kto").fn(unpaired(), beta=0.5, desirable_weight=1.3, undesirable_weight=0.7)
    close(out.loss[:2], [1.3 * (1 - sig(0.5 * (1 - z0))), 0.7 * (1 - sig(0.5 * (z0 + 1)))])


def test_kto_kl_is_clamped() -> None:
    out = get_objective("kto").fn(unpaired(kl_policy=t(-7, -7, -7, -7)))  # mean(kl_policy - kl_ref) < 0
    close(out.metrics["kl"], 0.0)
    close(out.loss[0], 1 - sig(0.1))


def test_kto_kl_is_detached() -> None:
    # z0 = 0.25 > 0, so the clamp passes the gradient through and only .detach() keeps it off the KL rows.
    policy, kl_policy = t(-5, -8, -3, -9).requires_grad_(), t(-5, -6, -7, -8).requires_grad_()
    out = get_objective("kto").fn(unpaired(policy=policy, kl_policy=kl_policy))
    assert float(out.metrics["kl"]) > 0
    out.loss.sum().backward()
    assert kl_policy.grad is None
    assert policy.grad is not None and (policy.grad != 0).all()


def test_kto_needs_kl_and_reference() -> None:
    with pytest.raises(ValueError, match="kl_policy"):
        get_objective("kto").fn(unpaired(kl_policy=None))
    with pytest.raises(ValueError, match="needs reference"):
        get_objective("kto").fn(UnpairedLogps(**{**unpaired().__dict__, "ref": None}))


def _random_unpaired(labels: list[bool]) -> UnpairedLogps:
    g = torch.Generator().manual_seed(1)
    n = len(labels)
    tokens = torch.randint(1, 12, (n,), generator=g).float()
    policy = -tokens * (0.5 + 2 * torch.rand(n, generator=g))
    kl_policy = -(5 + 20 * torch.rand(n, generator=g))
    return UnpairedLogps(policy=policy, tokens=tokens, label=torch.tensor(labels),
                         ref=policy + 3 * torch.randn(n, generator=g), kl_policy=kl_policy,
                         kl_ref=kl_policy - 2 * torch.rand(n, generator=g),  # positive KL estimate
                         logits_mean=torch.randn(n, generator=g))


KTO_SHARED = ["kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
              "logits/chosen", "logits/rejected"]


@pytest.mark.parametrize("labels", [[True, False, False, True, True, False, True],
                                    [True, True, True]])  # one-class batch: TRL drops the other-class metrics
def test_kto_matches_trl(labels: list[bool]) -> None:
    u = _random_unpaired(labels)
    kw = dict(beta=0.2, desirable_weight=1.3, undesirable_weight=0.7)
    out = get_objective("kto").fn(u, **kw)
    trl_loss, trl_metrics = trl_kto(u, **kw)
    close(out.loss.mean(), float(trl_loss))
    shared = [k for k in KTO_SHARED if k in trl_metrics]
    assert shared == [k for k in KTO_SHARED if k in out.metrics]
    for name in shared:
        close(out.metrics[name], trl_metrics[name], tol=1e-5)
    assert trl_metrics["kl"] > 0.1  # the z0 shift is exercised, not clamped away
    other, _ = trl_kto(u, **{**kw, "beta": 0.4})
    assert abs(float(other) - float(out.loss.mean())) > 1e-3


# ------------------------------------------------------------------------------------------------- BCO


def test_bco_delta_is_updated_before_the_loss_and_is_cumulative() -> None:
    bco = get_objective("bco").fn
    state: dict[str, float] = {}
    out = bco(unpaired(ref=(-6, -7, -4, -10)), state=state)  # rewards 0.1·[1, -1, 1, 1]
    d1 = (0.1 - 0.1 + 0.1 + 0.1) / 4
    close(state["delta_mean"], d1)
    close(state["delta_count"], 4.0)
    close(out.metrics["delta"], d1)
    close(out.loss, [-math.log(sig(0.1 - d1)), -math.log(sig(-(-0.1 - d1))),
                     -math.log(sig(0.1 - d1)), -math.log(sig(-(0.1 - d1)))], tol=1e-6)

    two = UnpairedLogps(policy=t(0, 0), tokens=t(1, 1), label=torch.tensor([True, False]), ref=t(-3, -5))
    out = bco(two, state=state)  # rewards 0.3, 0.5
    d2 = (4 * d1 + 0.3 + 0.5) / 6  # mean of all six rewards, not an EMA of batch means
    close(state["delta_mean"], d2)
    close(out.loss, [-math.log(sig(0.3 - d2)), -math.log(sig(-(0.5 - d2)))])
    json.dumps(state)  # the loop checkpoints it as JSON


def test_bco_eval_does_not_update_delta() -> None:
    state = {"delta_mean": 0.2, "delta_count": 10.0}
    out = get_objective("bco").fn(unpaired(), state=state, training=False)
    assert state == {"delta_mean": 0.2, "delta_count": 10.0}
    close(out.loss[:2], [-math.log(sig(0.1 - 0.2)), -math.log(sig(-(-0.1 - 0.2)))])


def test_bco_udm_weights_are_clamped_and_only_hit_undesirable() -> None:
    state = {"delta_mean": 0.0, "delta_count": 1e6}  # δ barely moves, so the numbers stay readable
    out = get_objective("bco").fn(unpaired(), state=state, weights=t(7.0, 20.0, 0.1, 0.2), udm=True)
    d = state["delta_mean"]
    close(out.loss, [-math.log(sig(0.1 - d)), -10 * math.log(sig(0.1 + d)),
                     -math.log(sig(0.1 - d)), -0.5 * math.log(sig(0.1 + d))], tol=1e-6)
    close(out.metrics["udm_weight/mean"], (10 + 0.5) / 2)


def test_bco_udm_without_weights_is_an_error() -> None:
    with pytest.raises(ValueError, match="udm"):
        get_objective("bco").fn(unpaired(), state={}, udm=True)


def _udm_objective(x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """scikit-learn's balanced, C = 1 logistic-regression objective, written out independently."""
    n, n_pos = len(y), float(y.sum())
    s = torch.where(y > 0, n / (2 * n_pos), n / (2 * (n - n_pos)))
    z = x @ coef + bias
    logloss = torch.log1p(torch.exp(-z)) * y + torch.log1p(torch.exp(z)) * (1 - y)
    return 0.5 * coef.pow(2).sum() + (s * logloss).sum()


def test_udm_classifier_is_the_balanced_logistic_regression_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    desirable = torch.randn(60, 5, generator=g) + torch.tensor([1.0, 0, 0, 0, 0])
    undesirable = torch.randn(15, 5, generator=g) * 3
    clf = fit_udm_classifier(desirable, undesirable)
    x = (torch.cat([desirable, undesirable]).double() - clf.centre) / clf.scale
    y = torch.cat([torch.ones(60), torch.zeros(15)]).double()
    coef, bias = clf.coef.clone().requires_grad_(), clf.bias.clone().requires_grad_()
    _udm_objective(x, y, coef, bias).backward()
    assert coef.grad.abs().max() < 1e-5 and abs(float(bias.grad)) < 1e-5  # stationary: the minimum
    p = clf.prob_desirable(torch.cat([desirable, undesirable]))
    predicted = p > 0.5
    close(clf.accuracy_desirable, float(predicted[:60].float().mean()))
    close(clf.accuracy_undesirable, float((~predicted[60:]).float().mean()))
    close(clf.accuracy, (clf.accuracy_desirable + clf.accuracy_undesirable) / 2)


def test_udm_classifier_is_class_balanced_and_separates_shifted_prompts() -> None:
    g = torch.Generator().manual_seed(1)
    # Same distribution, 4:1 imbalance: balanced weights give p ≈ ½ (ratio ≈ 1), not the 0.8 class prior.
    same = fit_udm_classifier(torch.randn(400, 3, generator=g), torch.randn(100, 3, generator=g))
    probe = same.prob_desirable(torch.randn(200, 3, generator=g))
    assert abs(float(probe.mean()) - 0.5) < 0.1
    # Shifted distributions: the classifier separates them and the ratio p/(1-p) follows.
    shifted = fit_udm_classifier(torch.randn(50, 3, generator=g) + 4, torch.randn(50, 3, generator=g) - 4)
    assert shifted.accuracy == 1.0
    p = shifted.prob_desirable(torch.tensor([[4.0, 4, 4], [-4.0, -4, -4]]))
    assert p[0] > 0.95 and p[1] < 0.05
    close(udm_density_ratio(t(0.8, 0.5)), [0.8 / (0.2 + 1e-8), 0.5 / (0.5 + 1e-8)], tol=1e-5)
    with pytest.raises(ValueError, match="both classes"):
        fit_udm_classifier(torch.randn(3, 2), torch.zeros(0, 2))


# -------------------------------------------------------------------------------------------- bco_pair


def _pair() -> PairLogps:
    # rewards β·h: chosen [0.1, -0.2], rejected [-0.1, 0.1]
    return PairLogps(chosen=t(-10, -20), rejected=t(-12, -15), chosen_tokens=t(5, 4), rejected_tokens=t(3, 6),
                     ref_chosen=t(-11, -18), ref_rejected=t(-11, -16))


def test_bco_pair_hand_values_with_running_delta() -> None:
    state: dict[str, float] = {}
    out = get_objective("bco_pair").fn(_pair(), state=state)
    d = (0.1 - 0.2 - 0.1 + 0.1) / 4
    close(out.metrics["delta"], d)
    rewards = ((0.1, -0.1), (-0.2, 0.1))
    close(out.loss, [-math.log(sig(rw - d)) - math.log(sig(-(rl - d))) for rw, rl in rewards])
    get_objective("bco_pair").fn(_pair(), state=state, training=False)
    close(state["delta_count"], 4.0)
    out = get_objective("bco_pair").fn(_pair(), state=state, use_running_delta=False)
    close(out.loss, [-math.log(sig(rw)) - math.log(sig(-rl)) for rw, rl in rewards])


# ------------------------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("name", ["kto", "bco"])
def test_unpaired_large_rewards_stay_finite(name: str) -> None:
    policy = t(-1e4, 0.0, -1e4, 0.0).requires_grad_()
    u = UnpairedLogps(policy=policy, tokens=t(1, 1, 1, 1), label=torch.tensor([True, True, False, False]),
                      ref=t(0.0, -1e4, 0.0, -1e4), kl_policy=t(0, -1e4, 0, 0), kl_ref=t(-1e4, 0, 0, 0))
    kw = {"state": {}, "weights": t(1, 1, 1e9, 0)} if name == "bco" else {}
    out = get_objective(name).fn(u, **kw)
    assert torch.isfinite(out.loss).all(), out.loss
    assert all(torch.isfinite(v).all() for v in out.metrics.values())
    out.loss.sum().backward()
    assert torch.isfinite(policy.grad).all()
