"""Training methods: data handling and loss per algorithm (see ``base``)."""

import alignkit.train.methods.cut  # noqa: F401  (registers "cut")
import alignkit.train.methods.distill  # noqa: F401  (registers "dckd", "adpa")
import alignkit.train.methods.dove  # noqa: F401  (registers "dove")
import alignkit.train.methods.grao  # noqa: F401  (registers "grao")
import alignkit.train.methods.mah_dpo  # noqa: F401  (registers "mah_dpo")
import alignkit.train.methods.online  # noqa: F401  (registers "online_ipo", "ipo_md", "online_dpo")
import alignkit.train.methods.poft  # noqa: F401  (registers "poft")
from alignkit.train.config import TrainConfig
from alignkit.train.methods.base import METHODS, BatchContext, Method, StepOutput, register_method
from alignkit.train.methods.preference import PreferenceMethod


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
