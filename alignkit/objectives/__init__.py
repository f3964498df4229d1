"""Training objectives: pure functions of log-probs, registered by name (see ``base`` for the contract).

Every module of this package is imported here, which registers its objectives: adding an objective is
adding a file, with no list to edit.
"""

import importlib
import pkgutil

from alignkit.objectives.base import OBJECTIVES, ObjectiveOutput, PairLogps, UnpairedLogps, get_objective
from alignkit.objectives.params import PARAMETERS, Params, ParamsError, validate_params

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OBJECTIVES", "PARAMETERS", "ObjectiveOutput", "PairLogps", "Params", "ParamsError", "UnpairedLogps",
           "get_objective", "validate_params"]
