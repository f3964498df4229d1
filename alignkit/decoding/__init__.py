"""Decoding-time alignment: strategies that align outputs without training, on the engine's one generator.

``base`` (the strategy registry, :class:`DecodeSettings`, candidates and selection), ``rewards`` (reward
specs -> batched scorers over the reward layer), ``strategies`` (``greedy``,
``sample``, ``best_of_n``), ``urial`` (in-context alignment of base models), ``deal`` (reward-guided search),
``rps`` (robust preference selection over a two-objective reward), ``run`` (:func:`decode`,
:func:`run_generate`), ``command`` (``alignkit generate``). The strategy modules register themselves when
:func:`~alignkit.decoding.base.get_strategy` first runs. This package imports the engine, rewards, data and
models, never eval or train.

Names are re-exported lazily (PEP 562) so that ``import alignkit.decoding.command`` (the CLI) does not pull
in torch before a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "alignkit.decoding.base": ("STRATEGIES", "Candidate", "DecodeSettings", "Decoded", "get_strategy", "register",
                               "select_best"),
    "alignkit.decoding.rewards": ("Reward", "build_reward"),
    "alignkit.decoding.run": ("decode", "run_generate"),
}
__all__ = ["STRATEGIES", "Candidate", "DecodeSettings", "Decoded", "Reward", "build_reward", "decode",
           "get_strategy", "register", "run_generate", "select_best"]
assert sorted(__all__) == sorted(name for names in _EXPORTS.values() for name in names)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from alignkit.decoding.base import (
        STRATEGIES,
        Candidate,
        Decoded,
        DecodeSettings,
        get_strategy,
        register,
        select_best,
    )
    from alignkit.decoding.rewards import Reward, build_reward
    from alignkit.decoding.run import decode, run_generate

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
