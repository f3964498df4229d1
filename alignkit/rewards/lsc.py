"""LSC: log-sigmoid-centred rewards and their sum, the "logical AND" of several rewards.

Wang et al., "Transforming and Combining Rewards for Aligning Large Language Models", ICML 2024,
arXiv:2402.00742. Alignment as conditioning on "the output is good" gives the utility

    u(x, y) = log σ(r(x, y) − r_ref(x))

for a Bradley-Terry reward r: the log-probability that y beats a reference response of the base policy π_0.
The reference point r_ref(x) is **per prompt**: a quantile of the rewards {r(x, y_j)}, y_j ~ π_0(·|x)
(j = 1..n). Defaults here: the median (``quantile=0.5``, the paper's basic choice; it also studies higher
quantiles such as 0.85 as a more demanding bar) of ``samples=16`` samples (the paper pre-computes a small
number per prompt; 16 is our choice), estimated with :func:`torch.quantile`'s linear interpolation.

u saturates above the reference (diminishing returns, less reward hacking) and is steep below it. Summing
transformed rewards, Σ_k log σ(r_k − r_ref,k) = log P(good on every property) under independence, so one
failing property dominates; a plain weighted sum lets one huge reward buy off a failed one.

The math is in pure functions (:func:`lsc_transform`, :func:`reference_point`, :func:`lsc_sum`,
:func:`weighted_sum`); :class:`LSCReward` wraps any reward source with a reference-policy sampler and a
per-prompt cache (in memory, keyed by the prompt's text, optionally a JSON Lines file);
:class:`SumReward` is the weighted sum of several sources (of LSC sources: the LSC sum).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.data.records import Text
from alignkit.io import append_jsonl, read_jsonl
from alignkit.rewards.base import check_lengths, preferences_from_rewards

Sampler = Callable[[list[Text]], list[list[str]]]
"""prompts -> for each prompt, responses sampled from the reference policy π_0."""

LSC_OPTIONS = ("quantile", "samples", "reference", "cache", "max_new_tokens", "temperature", "seed", "batch_size")


def _tensor(x: Tensor | float | Sequence[float]) -> Tensor:
    return x.float() if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float32)


def lsc_transform(rewards: Tensor | float | Sequence[float], reference: Tensor | float | Sequence[float]) -> Tensor:
    """u = log σ(r − r_ref), elementwise (broadcasting); computed stably by ``logsigmoid``."""
    return F.logsigmoid(_tensor(rewards) - _tensor(reference))


def reference_point(sample_rewards: Tensor | Sequence[float] | Sequence[Sequence[float]],
                    quantile: float = 0.5) -> Tensor:
    """r_ref: the ``quantile`` of reference-policy samples' rewards along the last dimension ([n] -> scalar,
    [P, n] -> [P]), with linear interpolation between order statistics."""
    check_quantile(quantile)
    rewards = _tensor(sample_rewards)
    if rewards.numel() == 0 or rewards.shape[-1] == 0:
        raise ValueError("lsc: no reference-policy sample rewards to take a quantile of")
    return torch.quantile(rewards, quantile, dim=-1)


def lsc_sum(rewards: Tensor | Sequence[Sequence[float]], references: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """Σ_k log σ(r_k − r_ref,k) over the first dimension ([K, N] rewards and references -> [N])."""
    return lsc_transform(rewards, references).sum(0)


def weighted_sum(rewards: Tensor | Sequence[Sequence[float]], weights: Sequence[float] | Tensor | None = None
                 ) -> Tensor:
    """Σ_k w_k r_k over the first dimension ([K, N] -> [N]); weights default to 1."""
    rewards = _tensor(rewards)
    w = torch.ones(rewards.shape[0]) if weights is None else _tensor(weights)
    if w.shape != rewards.shape[:1]:
        raise ValueError(f"{rewards.shape[0]} rewards but {w.numel()} weights")
    return (w.view(-1, *([1] * (rewards.dim() - 1))) * rewards).sum(0)


def check_quantile(quantile: float) -> None:
    if not 0.0 <= float(quantile) <= 1.0:
        raise ValueError(f"lsc: quantile must lie in [0, 1], got {quantile}")


def prompt_key(prompt: Text) -> str:
    """The cache key of a prompt: its text, or a conversation as JSON (every turn, as π_0 sees it)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def policy_sampler(model, tokenizer, samples: int = 16, max_new_tokens: int = 64, temperature: float = 1.0,
                   seed: int = 0, batch_size: int = 8) -> Sampler:
    """A :data:`Sampler` drawing ``samples`` responses per prompt from a loaded causal LM (the engine's
    generator, the prompt encoded as training encodes it)."""
    from alignkit.engine.generation import generate

    def sample(prompts: list[Text]) -> list[list[str]]:
        out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       do_sample=True, temperature=temperature, seed=seed, n=samples)
        return [list(o) for o in out] if samples > 1 else [[o] for o in out]

    return sample


class LSCReward:
    """``source``'s rewards, LSC-transformed: u = log σ(r − r_ref(x)) (module docstring).

    r_ref(x) is the ``quantile`` of ``source``'s rewards of ``sampler(x)`` (responses of π_0), computed once
    per prompt and cached in memory; with ``cache`` (a JSON Lines path) the sample rewards are also appended
    there, one line ``{"prompt", "rewards", "reference", "quantile"}`` per prompt, and read back on the next
    run (lines may also carry only ``reference``, precomputed elsewhere). A cache file belongs to one source
    and one reference policy. Without a sampler, prompts missing from the cache raise.

    As a preference source, P(y ≻ y') = σ(u(y) − u(y')) = σ(d)/(σ(d) + σ(d')) with d = r − r_ref: the
    probability that y is the good one given that exactly one of the two is.
    """

    def __init__(self, source, sampler: Sampler | None = None, quantile: float = 0.5,
                 cache: str | Path | None = None, name: str | None = None, **sampling: Any):
        if not callable(getattr(source, "rewards", None)):
            raise ValueError(f"lsc needs a scalar reward (a verifier or reward model), not {type(source).__name__}")
        check_quantile(quantile)
        self.source, self.sampler, self.quantile = source, sampler, float(quantile)
        self.cache_path = Path(cache) if cache is not None else None
        self.name = name or type(source).__name__
        self.sampling = sampling  # policy_sampler options for bind_policy (samples, max_new_tokens, ...)
        self.references: dict[str, float] = {}
        if self.cache_path is not None and self.cache_path.exists():
            for i, row in enumerate(read_jsonl(self.cache_path), 1):
                if not isinstance(row, dict) or "prompt" not in row or not ("rewards" in row or "reference" in row):
                    raise ValueError(f"{self.cache_path}:{i}: an lsc cache line needs 'prompt' and 'rewards' "
                                     "(or 'reference')")
                key = prompt_key(row["prompt"])
                self.references[key] = (float(reference_point(row["rewards"], self.quantile)) if "rewards" in row
                                        else float(row["reference"]))

    def bind_policy(self, model, tokenizer) -> None:
        """Sample the reference points from this loaded model (π_0), unless a sampler is already set."""
        if self.sampler is None:
            self.sampler = policy_sampler(model, tokenizer, **self.sampling)

    def reference(self, prompts: Sequence[Text]) -> Tensor:
        """r_ref per prompt [N]; prompts not seen yet are sampled in one call to the sampler and scored."""
        keys = [prompt_key(p) for p in prompts]
        missing: dict[str, Text] = {}
        for key, prompt in zip(keys, prompts, strict=True):
            if key not in self.references:
                missing.setdefault(key, prompt)
        if missing:
            if self.sampler is None:
                raise ValueError(f"lsc reward ({self.name}): no reference policy to sample for prompt "
                                 f"{next(iter(missing))[:60]!r}; give lsc.reference: MODEL or a cache holding it")
            todo = list(missing.values())
            groups = self.sampler(todo)
            if len(groups) != len(todo) or any(len(g) == 0 for g in groups):
                raise ValueError(f"lsc reward ({self.name}): the sampler gave {len(groups)} groups for {len(todo)} "
                                 "prompts (each needs at least one response)")
            flat = self.source.rewards([p for p, g in zip(todo, groups, strict=True) for _ in g],
                                       [t for g in groups for t in g]).float().tolist()
            start = 0
            for key, prompt, group in zip(missing, todo, groups, strict=True):
                sample_rewards = flat[start:start + len(group)]
                start += len(group)
                self.references[key] = float(reference_point(sample_rewards, self.quantile))
                if self.cache_path is not None:
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    append_jsonl(self.cache_path, {"prompt": prompt, "rewards": sample_rewards,
                                                   "reference": self.references[key], "quantile": self.quantile})
        return torch.tensor([self.references[k] for k in keys], dtype=torch.float32)

    def transformed(self, prompts: Sequence[Text], responses: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(u, raw rewards r, r_ref), each [N]: what to log next to each other."""
        check_lengths(prompts, responses)
        raw = self.source.rewards(list(prompts), list(responses)).float()
        ref = self.reference(prompts)
        return lsc_transform(raw, ref), raw, ref

    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        return self.transformed(prompts, responses)[0]

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return preferences_from_rewards(self, prompts, first, second)

    @staticmethod
    def preference_from_rewards(first: Tensor, second: Tensor) -> Tensor:
        return torch.sigmoid(first.float() - second.float())


class SumReward:
    """Σ_k w_k r_k of several reward sources: the plain weighted sum, or, when the sources are
    :class:`LSCReward`, the LSC sum (log P(good on every property), the "logical AND").

    As a preference source: Bradley-Terry on the sum, P(y ≻ y') = σ(R(y) − R(y')).
    """

    def __init__(self, terms: Sequence[tuple[float, Any]]):
        if not terms:
            raise ValueError("a sum of rewards needs at least one reward")
        for _, source in terms:
            if not callable(getattr(source, "rewards", None)):
                raise ValueError(f"a sum of rewards needs scalar rewards, not {type(source).__name__} (a judge "
                                 "only compares)")
        self.terms = [(float(w), s) for w, s in terms]

    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        check_lengths(prompts, responses)
        return weighted_sum(torch.stack([s.rewards(list(prompts), list(responses)).float() for _, s in self.terms]),
                            [w for w, _ in self.terms])

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return preferences_from_rewards(self, prompts, first, second)

    @staticmethod
    def preference_from_rewards(first: Tensor, second: Tensor) -> Tensor:
        return torch.sigmoid(first.float() - second.float())


def build_lsc(source, options: Any, device: str | None = None, log=print, name: str | None = None) -> LSCReward:
    """An :class:`LSCReward` around ``source`` from the ``lsc:`` options of a spec (None, ``true`` or a
    mapping of :data:`LSC_OPTIONS`); ``reference: MODEL`` loads π_0 (builtin name, directory or hub id)."""
    if options is None or options is True:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"lsc options must be a mapping of {', '.join(LSC_OPTIONS)}; got {options!r}")
    unknown = sorted(set(options) - set(LSC_OPTIONS))
    if unknown:
        raise ValueError(f"unknown lsc option {unknown[0]!r}; known: {', '.join(LSC_OPTIONS)}")
    quantile = options.get("quantile", 0.5)
    check_quantile(quantile)
    samples = int(options.get("samples", 16))
    if samples < 1:
        raise ValueError(f"lsc: samples must be >= 1, got {samples}")
    reward = LSCReward(source, None, quantile, options.get("cache"), name=name, samples=samples,
                       max_new_tokens=int(options.get("max_new_tokens", 64)),
                       temperature=float(options.get("temperature", 1.0)), seed=int(options.get("seed", 0)),
                       batch_size=int(options.get("batch_size", 8)))
    if options.get("reference") is not None:
        from alignkit.models import load_model

        model, tokenizer = load_model(str(options["reference"]), device=str(device) if device is not None else "auto",
                                      log=log)
        reward.bind_policy(model.eval().requires_grad_(False), tokenizer)
    return reward



def split_lsc_prefix(spec: str) -> tuple[dict[str, Any] | None, str]:
    """``"lsc:SPEC"`` -> ({}, SPEC); ``"lsc@0.85:SPEC"`` -> ({"quantile": 0.85}, SPEC); else (None, spec)."""
    head, colon, rest = spec.partition(":")
    if not colon or not (head == "lsc" or head.startswith("lsc@")):
        return None, spec
    if not rest:
        raise ValueError(f"reward spec {spec!r}: give the reward to transform, e.g. lsc:verifier:synthetic")
    if head == "lsc":
        return {}, rest
    try:
        quantile = float(head[4:])
    except ValueError:
        raise ValueError(f"reward spec {spec!r}: lsc@Q needs a quantile in [0, 1], e.g. lsc@0.85:{rest}") from None
    check_quantile(quantile)
    return {"quantile": quantile}, rest



__all__ = ["LSCReward", "LSC_OPTIONS", "Sampler", "SumReward", "build_lsc", "lsc_sum", "lsc_transform",
           "policy_sampler", "prompt_key", "reference_point", "split_lsc_prefix", "weighted_sum"]
