"""Training methods: data handling and loss per algorithm (see ``base``)."""

import importlib
import pkgutil

from alignkit.train.config import TrainConfig
from alignkit.train.methods.base import METHODS, BatchContext, Method, StepOutput, register_method
from alignkit.train.methods.preference import PreferenceMethod

# Importing every module of this package registers its methods: a new method is a new file, no list to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_method(config: TrainConfig) -> Method:
    """The method registered for the run's objectives; offline log-prob objectives by default."""
    names = {o.name for o in config.objectives}
    special = {METHODS[n] for n in names if n in METHODS}
    if not special:
        return PreferenceMethod(config)
    if len(special) > 1 or len(names) > 1 and any(n not in METHODS for n in names):
        raise ValueError(f"objectives {sorted(names)} need different training methods; run them separately")
    return special.pop()(config)


__all__ = ["METHODS", "BatchContext", "Method", "PreferenceMethod", "StepOutput", "build_method",
           "register_method"]
