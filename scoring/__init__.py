"""Scorers (one file each, registered by name) and the selection policy. No Prefect here."""

import importlib
import pkgutil

# Importing every module registers every scorer: adding a scorer is adding one file.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
