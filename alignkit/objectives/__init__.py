"""Training objectives: pure functions of log-probs, registered by name (see ``base`` for the contract)."""

# Importing a module registers its objectives; modules added later by other components go on this line.
from alignkit.objectives import base, binary, preference, sft  # noqa: F401
from alignkit.objectives.base import OBJECTIVES, ObjectiveOutput, PairLogps, UnpairedLogps, get_objective

__all__ = ["OBJECTIVES", "ObjectiveOutput", "PairLogps", "UnpairedLogps", "get_objective"]
