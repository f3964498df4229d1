"""The strategy registry, the settings every strategy shares, and what a strategy returns per prompt.

A strategy is a function ``(ctx, prompts) -> list[Decoded]`` registered under a name with
:func:`register`; it decodes a batch of prompts through the engine's one generator
(:mod:`alignkit.engine.generation`) and, when it needs one, scores candidates with ``ctx.reward``
(:class:`~alignkit.decoding.rewards.Reward`). :func:`get_strategy` finds it by name with a one-line error
listing the known names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.records import Text


@dataclass(frozen=True)
class DecodeSettings:
    """Settings shared by every strategy; each strategy reads the ones it uses (``Strategy.settings``)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    system: str | None = None
    batch_size: int = 8  # prompts per engine call
    reward_batch_size: int = 32  # candidates per reward call
    n: int = 8  # best_of_n: samples per prompt
    # DeAL (Huang et al., arXiv:2402.06147)
    deal_top_k: int = 4
    deal_lookahead: int = 4
    deal_lambda: float = 1.0
    deal_beam: int = 2
    deal_cache: bool = True  # keep each beam's KV cache across steps (False: re-read the prefix every step)
    # URIAL (Lin et al., arXiv:2312.01552)
    urial_examples: Path | None = None
    urial_k: int | None = None  # use the first K examples (default: all)
    # RPS (Mao et al., arXiv:2510.20498): directions in the plane of a two-objective reward, angles in degrees
    rps_k: int = 5  # candidates (directions) per prompt
    rps_angle: float = 45.0  # target direction θ*: v* = (cos θ*, sin θ*)
    rps_radius: float = 30.0  # angular radius Δ of the neighbourhood
    rps_baseline: bool = False  # k samples at θ* instead (best-of-k at the target direction)
    rps_objectives: tuple[str, ...] = ()  # the two objectives' names in the instruction (default: the rewards')
    rps_in_prompt: bool = False  # state the direction in the user prompt instead of the system message
    # steer (PAS-style activation steering, Zhu et al., arXiv:2408.11779)
    steer_traits: Path | None = None  # questionnaire JSONL (default: the builtin sample)
    steer_trait: str | None = None
    steer_alpha: float = 4.0  # strength in units of σ (the spread of training activations along the direction)
    steer_layers: tuple[int, ...] = ()  # decoder layers (default: the middle one)
    steer_level: str = "layer"  # "layer": the layers' residual stream; "head": probe-selected attention heads
    steer_heads: int = 24  # head level: heads kept (PAS's 24), capped by the model's heads

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "reward_batch_size": self.reward_batch_size, "n": self.n,
                    "deal_top_k": self.deal_top_k, "deal_beam": self.deal_beam, "rps_k": self.rps_k}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_new_tokens < 1 or self.deal_lookahead < 0:
            raise ValueError("max_new_tokens must be >= 1 and deal_lookahead >= 0")
        if self.urial_k is not None and self.urial_k < 0:
            raise ValueError(f"urial_k must be >= 0, got {self.urial_k}")
        if not 0 <= self.rps_radius <= 180:
            raise ValueError(f"rps_radius must be in [0, 180] degrees, got {self.rps_radius}")
        if self.steer_level not in ("layer", "head") or self.steer_heads < 1:
            raise ValueError(f"steer_level must be 'layer' or 'head' and steer_heads >= 1, got "
                             f"{self.steer_level!r} and {self.steer_heads}")
        if self.rps_objectives and len(self.rps_objectives) != 2:
            raise ValueError(f"rps_objectives names two objectives, got {len(self.rps_objectives)}")

    def pick(self, names: Sequence[str]) -> dict[str, Any]:
        """The named settings as JSON-able values (what an output line records)."""
        values = asdict(self)
        return {k: (str(values[k]) if isinstance(values[k], Path) else
                    list(values[k]) if isinstance(values[k], tuple) else values[k]) for k in names}


@dataclass
class Candidate:
    """One response considered for a prompt, with every score the strategy computed."""

    text: str
    tokens: int
    logp: float | None = None  # summed log-prob of the response under the model
    reward: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # strategy-specific (heuristic f, ...)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "tokens": self.tokens}
        if self.logp is not None:
            out["logp"] = round(self.logp, 5)
        if self.reward is not None:
            out["reward"] = self.reward
        out.update({k: round(v, 5) for k, v in self.scores.items()})
        return out


@dataclass
class Decoded:
    """A strategy's answer for one prompt: the selected candidate's index and every candidate."""

    candidates: list[Candidate]
    selected: int = 0
    tokens_generated: int = 0  # every token decoded for this prompt, lookaheads and discarded samples included

    @property
    def text(self) -> str:
        return self.candidates[self.selected].text


@dataclass
class Context:
    """What a strategy works with: the model, its tokenizer, the reward (or None) and the settings."""

    model: Any
    tokenizer: Any
    settings: DecodeSettings
    reward: Any = None  # alignkit.decoding.rewards.Reward
    log: Callable[[str], None] = print


StrategyFn = Callable[[Context, Sequence[Text]], list[Decoded]]


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: StrategyFn
    needs_reward: bool
    settings: tuple[str, ...]  # the DecodeSettings fields it reads (recorded in every output line)
    summary: str


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, *, needs_reward: bool = False, settings: Sequence[str] = (), summary: str = ""
             ) -> Callable[[StrategyFn], StrategyFn]:
    """Register a strategy under ``name``."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is registered twice")
        STRATEGIES[name] = Strategy(name, fn, needs_reward, tuple(settings),
                                    summary or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return wrap


BUILTIN_MODULES = ("alignkit.decoding.strategies", "alignkit.decoding.urial", "alignkit.decoding.deal",
                   "alignkit.decoding.rps", "alignkit.decoding.steer")


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name`` (the builtin strategy modules are imported first)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown strategy {name!r}{hint}; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def select_best(rewards: Sequence[float], logps: Sequence[float | None]) -> int:
    """Index of the highest reward; ties broken by the higher log-prob, then by the earlier candidate."""
    if not rewards:
        raise ValueError("no candidates to select from")
    keys = [(r, lp if lp is not None else float("-inf"), -i) for i, (r, lp) in enumerate(zip(rewards, logps,
                                                                                             strict=True))]
    return max(range(len(keys)), key=keys.__getitem__)
