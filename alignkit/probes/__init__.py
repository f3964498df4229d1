"""Probes: value/opinion MCQs with robustness checks, honesty, the Bullshit Index, moral direction, PROFILE.

Every module of this package is imported here, which registers its suites (see :mod:`alignkit.probes.base`).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in {"base", "command", "run"}:
        importlib.import_module(f"{__name__}.{_module.name}")
