"""Model families on the shared skeleton, each in its own folder with a config and a modeling file.

A family folder exports ``FAMILY`` (a ``registry.Family``); every such folder below this package is
registered with the Auto classes on import, so adding a family never touches this file.
"""

import importlib
import pkgutil

from .config import AttnLabConfig
from .gpt import GPTConfig, GPTForCausalLM
from .meta_init import build_on_meta, materialize
from .registry import Family, build_config, create_model, get_family, list_models, register_family
from .skeleton import AttnLabForCausalLM


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.ispkg:
            module = importlib.import_module(f"{__name__}.{info.name}")
            if isinstance(getattr(module, "FAMILY", None), Family):
                register_family(module.FAMILY)


_register_all()

__all__ = [
    "AttnLabConfig",
    "AttnLabForCausalLM",
    "Family",
    "GPTConfig",
    "GPTForCausalLM",
    "build_config",
    "build_on_meta",
    "create_model",
    "get_family",
    "list_models",
    "materialize",
    "register_family",
]
