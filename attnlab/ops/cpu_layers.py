"""The CPU fast paths every attnlab model's plain layers take: ``nn.Linear`` → ``attnlab.ops.linear.Linear``
(oneDNN for fp32), ``nn.Dropout`` → ``attnlab.ops.dropout.Dropout`` (a cheaper mask).

Each fast class subclasses the plain one with the same parameters, state dict and init, and falls back to the
plain computation off the CPU, so swapping a module's class in place changes no weight and no checkpoint.
"""

from __future__ import annotations

from torch import nn

from .dropout import Dropout
from .linear import Linear

FAST_CLASSES: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: Linear, nn.Dropout: Dropout}


def use_fast_cpu_layers(module: nn.Module) -> nn.Module:
    """Give every plain ``nn.Linear`` and ``nn.Dropout`` inside ``module`` its fast class (in place)."""
    for sub in module.modules():
        fast = FAST_CLASSES.get(type(sub))
        if fast is not None:
            sub.__class__ = fast
    return module
