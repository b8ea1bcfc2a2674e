"""Activation checkpointing by name, as ``attnlab train --activation-checkpointing`` and the bench apply it.

A checkpointed block keeps only its input during the forward and recomputes its activations in the backward:
less memory for one more forward of that block. ``full`` checkpoints every block; ``selective`` every other
block (blocks 0, 2, 4, ...), about half the saving for half the extra compute. Both go through Hugging Face's
``activation_checkpointing_enable(every_n_layers=...)``, so a model enabled by hand or by HF's ``Trainer``
behaves the same; the skeleton's block loop does the checkpointing (``Backbone.run_block``).
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .skeleton import NON_REENTRANT

# mode → checkpoint every n-th block; "none" leaves the model as it is
EVERY_N_LAYERS = {"full": 1, "selective": 2}
MODES = ("none", *EVERY_N_LAYERS)


def enable_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Checkpoint the blocks of ``model`` as ``mode`` (``none``, ``full``, ``selective``) says."""
    if mode not in MODES:
        raise ConfigError(f"activation_checkpointing must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(model).__name__} does not support activation checkpointing")
    every = EVERY_N_LAYERS[mode]
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(every_n_layers=every)
    else:  # releases before the rename: only gradient_checkpointing_enable, without every_n_layers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model._set_gradient_checkpointing(True, NON_REENTRANT, every)


def checkpointed_blocks(model: nn.Module) -> list[bool]:
    """Per block of an attnlab causal LM, whether it is marked for activation checkpointing."""
    return [bool(getattr(block, "gradient_checkpointing", False)) for block in model.model.layers]
