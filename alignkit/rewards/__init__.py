"""Reward and preference sources: verifiers, reward models, judges (see ``sources``)."""

from alignkit.rewards.sources import (
    JudgePreference,
    PreferenceSource,
    RewardModel,
    RewardSource,
    VerifierReward,
    build_source,
    prompt_text,
)

__all__ = ["JudgePreference", "PreferenceSource", "RewardModel", "RewardSource", "VerifierReward",
           "build_source", "prompt_text"]
