"""Experiment names → the modules that define them, imported only when an experiment is asked for.

Each entry is a ``"module:attribute"`` string and a one-line description, so ``attnlab experiment --list``
names every experiment without importing torch-heavy modules; ``get(name)`` imports one and checks it is an
``Experiment``. An entry whose module is missing or fails to import gives a ``ConfigError`` that says so.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..errors import ConfigError
from .base import Experiment

EXPERIMENTS: dict[str, tuple[str, str]] = {
    "relational-games": ("attnlab.experiments.relational:RELATIONAL_GAMES",
                         "accuracy vs training images on relational games: Transformer vs DAT(1,1) vs DAT(0,2)"),
    "math": ("attnlab.experiments.math:MATH",
             "math problems (seq2seq): per-character and exact-match accuracy vs steps, Transformer vs DAT"),
    "vision-digits": ("attnlab.experiments.vision:VISION_DIGITS",
                      "8×8 digits: accuracy vs training images, ViT vs ViDAT"),
    "lm-dat": ("attnlab.experiments.lm:LM_DAT", "language modelling: GPT baseline vs DAT"),
    "lm-leap": ("attnlab.experiments.lm:LM_LEAP", "language modelling: GPT baseline vs LEAP"),
}


def names() -> list[str]:
    return list(EXPERIMENTS)


def available(name: str) -> bool:
    """Whether the experiment's module exists (found without importing it)."""
    module = EXPERIMENTS[name][0].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def listing() -> list[tuple[str, str, bool]]:
    """(name, description, available) of every registered experiment; imports none of them."""
    return [(name, description, available(name)) for name, (_, description) in EXPERIMENTS.items()]


def get(name: str) -> Experiment:
    """The experiment registered as ``name``, imported now."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} "
                          "(attnlab experiment --list)")
    target = EXPERIMENTS[name][0]
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"experiment {name!r} is not available: its module {module_name} is not "
                              "installed in this copy of attnlab") from None
        raise ConfigError(f"experiment {name!r} cannot be loaded: {module_name} needs {exc.name!r}, which is "
                          "not installed") from None
    except Exception as exc:  # noqa: BLE001 -- a broken module: name it instead of a traceback
        raise ConfigError(f"experiment {name!r} cannot be loaded: importing {module_name} failed with "
                          f"{type(exc).__name__}: {exc}") from None
    experiment = getattr(module, attribute, None)
    if experiment is None:
        raise ConfigError(f"experiment {name!r} cannot be loaded: {module_name} has no {attribute}")
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"experiment {name!r} cannot be loaded: {target} is a {type(experiment).__name__}, "
                          "not an Experiment")
    return experiment
