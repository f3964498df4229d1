"""Reward and preference sources for methods that score their own samples (GRAO, online IPO / DPO).

The interfaces (``RewardSource``, ``PreferenceSource``) are in :mod:`alignkit.rewards.base`. Every reward
source is also a preference source: ``RewardModel`` (:mod:`alignkit.rewards.reward_model`) through
Bradley-Terry, p = σ(r(y) − r(y')); :class:`VerifierReward` (rewards 1/0) as p = (1 + r(y) − r(y'))/2, i.e.
1, ½ or 0. :class:`JudgePreference` only compares. An LM judge is order-sensitive (position bias: Zheng et
al., "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", NeurIPS 2023 Datasets and Benchmarks,
arXiv:2306.05685), while the preference model of online IPO and Nash-MD satisfies P(y ≻ y') = 1 − P(y' ≻ y)
(Munos et al., "Nash Learning from Human Feedback", ICML 2024, arXiv:2312.00886; Calandriello et al.,
"Human Alignment of Large Language Models through Online Preference Optimisation", ICML 2024,
arXiv:2403.08635), so the judge is asked in both orders and the answers symmetrised.

:func:`build_source` turns a config value into a source: ``"verifier"``, ``{type: reward_model, model:
<dir or hub id>}``, ``{type: judge, model: <builtin name, dir or hub id>}``, or ``"package.module:attr"``
(a source object, class or factory; keyword arguments from the mapping are passed to a class or factory),
``{type: pal, model: DIR, user: ID}`` (:mod:`alignkit.rewards.pal`) or ``{type: gtalign, quality: SPEC}``
(:mod:`alignkit.rewards.gtalign`).
A scalar reward becomes LSC-transformed (:mod:`alignkit.rewards.lsc`) with ``transform: lsc`` in its mapping
(options under ``lsc: {quantile, samples, reference, cache, ...}``) or the string prefix ``lsc:`` /
``lsc@0.85:``; a list of specs is their sum (:class:`~alignkit.rewards.lsc.SumReward`; an item's ``weight``
defaults to 1), the LSC sum when its items are LSC-transformed.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from alignkit.data.records import Text
from alignkit.rewards.base import (
    PreferenceSource,
    RewardSource,
    check_lengths,
    preferences_from_rewards,
    prompt_text,
)
from alignkit.rewards.judge import LMJudge, judge_pair
from alignkit.rewards.lsc import SumReward, build_lsc, split_lsc_prefix
from alignkit.rewards.reward_model import RewardModel


class VerifierReward:
    """The synthetic tasks' programmatic verifiers (``alignkit.data.synthetic.verify``): reward 1 or 0.

    Prompts from no synthetic family raise, unless ``unknown_reward`` is given (then they get it).
    """

    def __init__(self, unknown_reward: float | None = None):
        self.unknown_reward = unknown_reward

    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        from alignkit.data.synthetic import verify

        check_lengths(prompts, responses)
        out = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                out.append(1.0 if verify(prompt_text(prompt), response) else 0.0)
            except ValueError:
                if self.unknown_reward is None:
                    raise
                out.append(float(self.unknown_reward))
        return torch.tensor(out, dtype=torch.float32)

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return preferences_from_rewards(self, prompts, first, second)

    @staticmethod
    def preference_from_rewards(first: Tensor, second: Tensor) -> Tensor:
        # Rewards are 0/1, so this is 1 when only `first` passes, 0 when only `second` does, ½ on a tie.
        return (1.0 + first.float() - second.float()).clamp(0.0, 2.0) / 2


class JudgePreference:
    """Pairwise preferences from a judge (:class:`~alignkit.rewards.judge.LMJudge` or any
    ``(prompt, a, b) -> P(a)``), asked in both orders: p = ½·[J(a, b) + 1 − J(b, a)]."""

    def __init__(self, judge):
        self.judge = judge

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        check_lengths(prompts, first, second)
        return torch.tensor([judge_pair(self.judge, prompt_text(p), a, b)
                             for p, a, b in zip(prompts, first, second, strict=True)], dtype=torch.float32)


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"source {path!r}: expected 'verifier', a mapping with 'type', 'lsc:SPEC', "
                         "a list, or 'package.module:attr'")
    return getattr(importlib.import_module(module), attr)


def _build_sum(specs: list | tuple, device, log) -> SumReward:
    if not specs:
        raise ValueError("an empty list of rewards; give at least one reward spec")
    terms = []
    for item in specs:
        options = dict(item) if isinstance(item, dict) else item
        weight = options.pop("weight", 1.0) if isinstance(options, dict) else 1.0
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"reward {item!r}: weight must be a number, got {weight!r}")
        terms.append((float(weight), build_source(options, device, log)))
    return SumReward(terms)


def build_source(spec: Any, device: str | torch.device | None = None, log=print) -> PreferenceSource:
    """A reward or preference source from a config value (see module docstring); objects pass through."""
    if spec is None:
        spec = "verifier"
    if isinstance(spec, list | tuple):
        return _build_sum(spec, device, log)
    if isinstance(spec, str):
        lsc, rest = split_lsc_prefix(spec)
        if lsc is not None:
            return build_lsc(build_source(rest, device, log), lsc, device, log, name=rest)
    if isinstance(spec, dict) and "transform" in spec:
        options = dict(spec)
        transform, lsc = options.pop("transform"), options.pop("lsc", None)
        if transform != "lsc":
            raise ValueError(f"source {spec!r}: unknown transform {transform!r}; known: lsc")
        return build_lsc(build_source(options, device, log), lsc, device, log, name=str(options.get("type")))
    if isinstance(spec, dict) and "lsc" in spec:
        raise ValueError(f"source {spec!r}: 'lsc' options need 'transform: lsc'")
    if not isinstance(spec, str | dict):
        if not isinstance(spec, PreferenceSource):
            raise ValueError(f"{spec!r} has no preferences() method")
        return spec
    options = dict(spec) if isinstance(spec, dict) else {"type": spec}
    kind = options.pop("type", None)
    if kind is None:
        raise ValueError(f"source {spec!r}: give its 'type' (verifier, reward_model, judge, pal, gtalign or "
                         "module:attr)")
    if kind == "verifier":
        return VerifierReward(**options)
    if kind == "reward_model":
        model = options.pop("model", None)
        if model is None:
            raise ValueError("reward_model source: give 'model' (a directory or hub id)")
        return RewardModel(str(model), device=device, **options)
    if kind == "judge":
        from alignkit.models import load_model

        name = options.pop("model", None)
        if name is None:
            raise ValueError("judge source: give 'model' (a builtin name, directory or hub id)")
        model, tokenizer = load_model(str(name), device=str(device) if device is not None else "auto", log=log)
        model.eval().requires_grad_(False)
        return JudgePreference(LMJudge(model, tokenizer, **options))
    if kind == "pal":  # a trained PAL model (alignkit.rewards.pal), one user's reward or the population's
        from alignkit.rewards.pal import PALReward

        if "model" not in options:
            raise ValueError("pal source: give 'model' (a directory written by 'alignkit reward pal-train')")
        return PALReward(str(options.pop("model")), device=device, log=log, **options)
    if kind == "gtalign":  # the mutual-welfare reward (alignkit.rewards.gtalign); 'quality' is a source spec
        from alignkit.rewards.gtalign import build_gtalign

        return build_gtalign(options, device, log)
    target = _import(kind)
    # A class has a `preferences` attribute too, so test for it before the instance check.
    source = target(**options) if isinstance(target, type) or not isinstance(target, PreferenceSource) else target
    if not isinstance(source, PreferenceSource):
        raise ValueError(f"source {kind!r} gave {source!r}, which has no preferences() method")
    return source


__all__ = ["JudgePreference", "PreferenceSource", "RewardModel", "RewardSource", "VerifierReward",
           "build_source", "prompt_text"]
