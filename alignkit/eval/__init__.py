"""Evaluation: preference metrics, pairwise judging, batched generation and the ``alignkit eval`` recipe.

Names are re-exported lazily (PEP 562) so that ``import alignkit.eval.command`` (the CLI) does not pull in
torch and transformers before a command actually runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "alignkit.eval.metrics": (
        "Estimate", "FlipStats", "KLEstimate", "LengthAdjustedWinRate", "alignment_gap", "bootstrap_ci",
        "difficulty", "difficulty_loss_threshold", "flipped_share", "idealized_ranking_accuracy",
        "implicit_reward_accuracy", "kl_estimate", "length_adjusted_win_rate", "length_stats",
        "ranking_accuracy", "reward_margins", "win_rate",
    ),
    "alignkit.eval.judge": ("JUDGE_INSTRUCTION", "Judge", "LMJudge", "compare", "judge_pair"),
    "alignkit.engine.generation": ("generate",),
    "alignkit.eval.run": (
        "EvalResult", "RewardModel", "evaluate_generations", "evaluate_preferences", "load_reward_model",
        "prompt_text", "synthetic_verifier", "write_result",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "JUDGE_INSTRUCTION", "Estimate", "EvalResult", "FlipStats", "Judge", "KLEstimate", "LMJudge",
    "LengthAdjustedWinRate", "RewardModel", "alignment_gap", "bootstrap_ci", "compare", "difficulty",
    "difficulty_loss_threshold", "evaluate_generations", "evaluate_preferences", "flipped_share", "generate",
    "idealized_ranking_accuracy", "implicit_reward_accuracy", "judge_pair", "kl_estimate",
    "length_adjusted_win_rate", "length_stats", "load_reward_model", "prompt_text", "ranking_accuracy",
    "reward_margins", "synthetic_verifier", "win_rate", "write_result",
]
assert sorted(__all__) == sorted(_MODULE_OF)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from alignkit.engine.generation import generate
    from alignkit.eval.judge import JUDGE_INSTRUCTION, Judge, LMJudge, compare, judge_pair
    from alignkit.eval.metrics import (
        Estimate,
        FlipStats,
        KLEstimate,
        LengthAdjustedWinRate,
        alignment_gap,
        bootstrap_ci,
        difficulty,
        difficulty_loss_threshold,
        flipped_share,
        idealized_ranking_accuracy,
        implicit_reward_accuracy,
        kl_estimate,
        length_adjusted_win_rate,
        length_stats,
        ranking_accuracy,
        reward_margins,
        win_rate,
    )
    from alignkit.eval.run import (
        EvalResult,
        RewardModel,
        evaluate_generations,
        evaluate_preferences,
        load_reward_model,
        prompt_text,
        synthetic_verifier,
        write_result,
    )


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'alignkit.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
