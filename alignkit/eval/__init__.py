"""Evaluation: preference metrics, generation metrics and the ``alignkit eval`` recipe.

Modules: ``metrics`` (pure arithmetic), ``preferences`` (pair metrics), ``generations`` (generation
metrics), ``writers`` (the output set), ``config`` (:class:`EvalConfig`), ``pipeline`` (one run from a
config), ``command`` (the CLI). Reward models and judges live in :mod:`alignkit.rewards` and are
re-exported here; scoring and generation are the engine's. Nothing here imports ``alignkit.train``.

Names are re-exported lazily (PEP 562) so that ``import alignkit.eval.command`` (the CLI) does not pull in
torch and transformers before a command actually runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignkit.lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "alignkit.eval.metrics": (
        "Estimate", "FlipStats", "KLEstimate", "LengthAdjustedWinRate", "alignment_gap", "bootstrap_ci",
        "difficulty", "difficulty_loss_threshold", "flipped_share", "idealized_ranking_accuracy",
        "implicit_reward_accuracy", "kl_estimate", "length_adjusted_win_rate", "length_stats",
        "ranking_accuracy", "reward_margins", "win_rate",
    ),
    "alignkit.rewards.judge": ("JUDGE_INSTRUCTION", "Judge", "LMJudge", "compare", "judge_pair"),
    "alignkit.rewards.reward_model": ("RewardModel", "load_reward_model"),
    "alignkit.engine.generation": ("generate",),
    "alignkit.eval.common": ("EvalResult", "prompt_text"),
    "alignkit.eval.preferences": ("evaluate_preferences",),
    "alignkit.eval.generations": ("evaluate_generations", "synthetic_verifier"),
    "alignkit.eval.writers": ("write_result",),
    "alignkit.eval.config": ("EvalConfig", "load_eval_config"),
    "alignkit.eval.pipeline": ("run_eval",),
}

__all__ = [
    "JUDGE_INSTRUCTION", "Estimate", "EvalConfig", "EvalResult", "FlipStats", "Judge", "KLEstimate", "LMJudge",
    "LengthAdjustedWinRate", "RewardModel", "alignment_gap", "bootstrap_ci", "compare", "difficulty",
    "difficulty_loss_threshold", "evaluate_generations", "evaluate_preferences", "flipped_share", "generate",
    "idealized_ranking_accuracy", "implicit_reward_accuracy", "judge_pair", "kl_estimate",
    "length_adjusted_win_rate", "length_stats", "load_eval_config", "load_reward_model", "prompt_text",
    "ranking_accuracy", "reward_margins", "run_eval", "synthetic_verifier", "win_rate", "write_result",
]
assert sorted(__all__) == sorted(name for names in _EXPORTS.values() for name in names)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from alignkit.engine.generation import generate
    from alignkit.eval.common import EvalResult, prompt_text
    from alignkit.eval.config import EvalConfig, load_eval_config
    from alignkit.eval.generations import evaluate_generations, synthetic_verifier
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
    from alignkit.eval.pipeline import run_eval
    from alignkit.eval.preferences import evaluate_preferences
    from alignkit.eval.writers import write_result
    from alignkit.rewards.judge import JUDGE_INSTRUCTION, Judge, LMJudge, compare, judge_pair
    from alignkit.rewards.reward_model import RewardModel, load_reward_model

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
