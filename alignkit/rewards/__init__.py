"""Rewards and preferences: verifiers, the reward-model scorer, LM judges, and the sources built from them.

``base`` (the reward/preference interfaces), ``reward_model`` (:class:`RewardModel`, one scorer for eval and
training), ``judge`` (pairwise judging in both orders, :class:`LMJudge`), ``lsc`` (the LSC transform and sum of
rewards, :class:`LSCReward`, :class:`SumReward`), ``sources`` (:func:`build_source`).
This package imports the engine and ``data``, never ``eval`` or ``train``.
"""

from alignkit.rewards.base import PreferenceSource, RewardSource, prompt_text
from alignkit.rewards.judge import JUDGE_INSTRUCTION, Judge, LMJudge, compare, judge_pair
from alignkit.rewards.lsc import LSCReward, SumReward, lsc_sum, lsc_transform, reference_point, weighted_sum
from alignkit.rewards.reward_model import RewardModel, load_reward_model
from alignkit.rewards.sources import JudgePreference, VerifierReward, build_source

__all__ = ["JUDGE_INSTRUCTION", "Judge", "JudgePreference", "LMJudge", "LSCReward", "PreferenceSource", "RewardModel",
           "RewardSource", "SumReward", "VerifierReward", "build_source", "compare", "judge_pair", "load_reward_model",
           "lsc_sum", "lsc_transform", "prompt_text", "reference_point", "weighted_sum"]
