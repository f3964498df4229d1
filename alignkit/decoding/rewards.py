"""Rewards for decoding: the reward layer's sources, from command-line specs, scored in batches.

A spec is one of (optionally prefixed ``WEIGHT*``, several combined as a weighted sum):

* ``verifier:synthetic`` (or ``verifier``): the synthetic tasks' programmatic verifiers, reward 1/0;
* ``reward_model:DIR`` (or an existing directory, or ``rm:DIR``): a sequence-classification reward model;
* ``judge:MODEL``: a causal LM asked which of two responses is better, in both orders. A judge only
  compares, so with a judge a candidate's score is its mean preference over the other candidates of its
  prompt (a round robin, N·(N−1) judge calls per prompt), and strategies that need a scalar reward of one
  text (DeAL) refuse it;
* ``pal:DIR`` or ``pal:DIR@USER``: a trained PAL model (:mod:`alignkit.rewards.pal`), USER's reward or, with
  no user, the population's;
* ``gtalign`` or ``gtalign:SPEC``: the GTAlign mutual-welfare reward (:mod:`alignkit.rewards.gtalign`), SPEC
  (default the synthetic verifiers) scoring the answer quality of the ``<response>`` block;
* ``package.module:attr``: any reward source object, class or factory;
* ``lsc:SPEC`` or ``lsc@Q:SPEC``: SPEC's reward LSC-transformed, u = log σ(r − r_ref(x)), r_ref(x) the
  quantile Q (default 0.5) of the rewards of 16 samples of the reference policy for the prompt (the model being
  decoded, bound by ``build_reward(..., policy=(model, tokenizer))``); several ``lsc:`` specs sum to the LSC
  "logical AND" (:mod:`alignkit.rewards.lsc`).

Everything is built by :func:`alignkit.rewards.build_source`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit.data.records import Text
from alignkit.rewards import RewardSource, VerifierReward, build_source
from alignkit.rewards.lsc import split_lsc_prefix

VERIFIER_SETS = ("synthetic",)


def source_spec(spec: str) -> Any:
    """A command-line reward spec (no weight) as a :func:`build_source` config value."""
    lsc, body = split_lsc_prefix(spec)
    if lsc is not None:
        inner = source_spec(body)
        inner = inner if isinstance(inner, dict) else {"type": inner}
        if inner.get("type") == "judge":
            raise ValueError(f"reward spec {spec!r}: lsc needs a scalar reward; a judge only compares")
        if "transform" in inner:
            raise ValueError(f"reward spec {spec!r}: lsc is given twice")
        return {**inner, "transform": "lsc", "lsc": lsc}
    kind, _, rest = spec.partition(":")
    if kind == "verifier":
        if rest and rest not in VERIFIER_SETS:
            raise ValueError(f"unknown verifier set {rest!r}; known: {', '.join(VERIFIER_SETS)}")
        return "verifier"
    if kind in ("reward_model", "rm"):
        if not rest:
            raise ValueError(f"reward spec {spec!r}: give the reward model, e.g. reward_model:runs/rm")
        return {"type": "reward_model", "model": rest}
    if kind == "judge":
        if not rest:
            raise ValueError(f"reward spec {spec!r}: give the judge model, e.g. judge:smollm2-135m-instruct")
        return {"type": "judge", "model": rest}
    if kind == "pal":  # pal:DIR or pal:DIR@USER (no user: the population's mean mixture)
        model, at, user = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if not model:
            raise ValueError(f"reward spec {spec!r}: give the PAL model, e.g. pal:runs/pal or pal:runs/pal@user007")
        return {"type": "pal", "model": model, **({"user": user} if at else {})}
    if kind == "gtalign":  # gtalign or gtalign:SPEC, SPEC the answer-quality reward of the <response> text
        return {"type": "gtalign", **({"quality": source_spec(rest)} if rest else {})}
    if Path(spec).expanduser().is_dir():
        return {"type": "reward_model", "model": spec}
    if ":" in spec and "." in kind:
        return spec
    raise ValueError(f"unknown reward spec {spec!r}; give verifier:synthetic, reward_model:DIR, a reward model "
                     "directory, judge:MODEL, pal:DIR[@USER], gtalign[:SPEC], package.module:attr, or lsc:SPEC")


def split_weight(spec: str) -> tuple[float, str]:
    head, star, tail = spec.partition("*")
    if star:
        try:
            return float(head), tail.strip()
        except ValueError:
            pass
    return 1.0, spec.strip()


class Reward:
    """One or more weighted sources; ``score(prompts, texts)`` gives one float per text.

    ``is_verifier`` is true when the reward is a single verifier (rewards are pass/fail: best-of-N then
    reports its pass-rate curve). ``is_judge`` when it is a single pairwise judge (see the module docstring).
    """

    def __init__(self, sources: Sequence[tuple[float, Any]], batch_size: int = 32, names: Sequence[str] = ()):
        if not sources:
            raise ValueError("a reward needs at least one source")
        self.sources = list(sources)
        self.batch_size = batch_size
        self.names = list(names) or [type(s).__name__ for _, s in self.sources]
        scalar = [hasattr(s, "rewards") for _, s in self.sources]
        self.is_judge = len(self.sources) == 1 and not scalar[0]
        if not self.is_judge and not all(scalar):
            raise ValueError("a judge only compares responses; it cannot be summed with other rewards")
        self.is_verifier = len(self.sources) == 1 and isinstance(self.sources[0][1], VerifierReward)

    def bind_policy(self, model, tokenizer) -> None:
        """LSC sources without a reference policy sample their reference points from ``model``."""
        for _, source in self.sources:
            if callable(getattr(source, "bind_policy", None)):
                source.bind_policy(model, tokenizer)

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{n}" if w != 1 else n for (w, _), n in zip(self.sources, self.names,
                                                                              strict=True))

    def score(self, prompts: Sequence[Text], texts: Sequence[str]) -> list[float]:
        """Scalar rewards of (prompt, text) items, in batches of ``batch_size``."""
        if self.is_judge:
            raise ValueError("a judge gives no reward of a single response; use a verifier or a reward model")
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts but {len(texts)} responses")
        total = torch.zeros(len(texts))
        for start in range(0, len(texts), self.batch_size):
            end = start + self.batch_size
            for weight, source in self.sources:
                total[start:end] += weight * source.rewards(list(prompts[start:end]), list(texts[start:end])).float()
        return total.tolist()

    def score_vectors(self, prompts: Sequence[Text], texts: Sequence[str]) -> list[list[float]]:
        """One component per source (its weight applied, not summed): a multi-objective reward, [texts, sources]."""
        if self.is_judge:
            raise ValueError("a judge gives no reward vector of a single response; use verifiers or reward models")
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts but {len(texts)} responses")
        columns = torch.zeros(len(texts), len(self.sources))
        for start in range(0, len(texts), self.batch_size):
            chunk_prompts, chunk_texts = list(prompts[start:start + self.batch_size]), list(texts[start:start +
                                                                                               self.batch_size])
            for j, (weight, source) in enumerate(self.sources):
                columns[start:start + len(chunk_texts), j] = weight * source.rewards(chunk_prompts,
                                                                                     chunk_texts).float()
        return columns.tolist()

    def score_groups(self, prompts: Sequence[Text], groups: Sequence[Sequence[str]]) -> list[list[float]]:
        """Scores of each prompt's candidates: rewards, or for a judge the round-robin mean preference."""
        if not self.is_judge:
            flat_prompts = [p for p, g in zip(prompts, groups, strict=True) for _ in g]
            flat = self.score(flat_prompts, [t for g in groups for t in g])
            out, start = [], 0
            for g in groups:
                out.append(flat[start:start + len(g)])
                start += len(g)
            return out
        judge = self.sources[0][1]
        out = []
        for prompt, group in zip(prompts, groups, strict=True):
            pairs = [(i, j) for i in range(len(group)) for j in range(i + 1, len(group))]
            wins = [0.0] * len(group)
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start:start + self.batch_size]
                p = judge.preferences([prompt] * len(chunk), [group[i] for i, _ in chunk],
                                      [group[j] for _, j in chunk]).tolist()
                for (i, j), pij in zip(chunk, p, strict=True):
                    wins[i] += pij
                    wins[j] += 1.0 - pij
            out.append([w / max(1, len(group) - 1) for w in wins])
        return out


def build_reward(specs: str | Sequence[str] | RewardSource | None, device: str | None = None, batch_size: int = 32,
                 log=print, policy: tuple[Any, Any] | None = None) -> Reward | None:
    """A :class:`Reward` from specs (``"0.5*verifier:synthetic"``, ``"lsc:rm:DIR"``, ...), a source object, or
    None. ``policy`` = (model, tokenizer) is the reference policy of ``lsc:`` specs that name none."""
    if specs is None or (not isinstance(specs, str) and isinstance(specs, Sequence) and not specs):
        return None
    if isinstance(specs, Reward):
        reward = specs
    elif not isinstance(specs, str | Sequence):
        reward = Reward([(1.0, specs)], batch_size)
    else:
        specs = [specs] if isinstance(specs, str) else list(specs)
        sources, names = [], []
        for spec in specs:
            weight, body = split_weight(spec)
            sources.append((weight, build_source(source_spec(body), device=device, log=log)))
            names.append(body)
        reward = Reward(sources, batch_size, names)
    if policy is not None:
        reward.bind_policy(*policy)
    return reward
