"""Build a model without allocating it, then materialise it where it will live.

``build_on_meta`` builds any preset on ``torch.device("meta")``: every parameter and buffer has its shape and
dtype but no storage, so a 13 B model (``lsw:xxl``, 52 GB in fp32) costs no memory. Its parameters can be
counted, its modules inspected and a sharding plan made from it; ``materialize`` then allocates the storage on
a device and initialises it exactly as an eager build does. This is the route sharded (FSDP) training takes:
shard the meta model first, materialise each rank's shard after.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .registry import build_config, get_model_kind


def build_on_meta(
    family: str, preset: str | None = "debug", *, dtype: torch.dtype | None = None, **overrides
) -> PreTrainedModel:
    """The model of ``family`` and ``preset`` (with config ``overrides``) on the meta device, in ``dtype``.

    ``dtype`` (e.g. ``torch.bfloat16``) is applied on the meta device, where it is free, so that
    ``materialize`` allocates the model once, directly in that dtype.
    """
    config = build_config(family, preset, **overrides)
    with torch.device("meta"):
        model = get_model_kind(family).model_class(config)
    return model if dtype is None else model.to(dtype)


def materialize(model: PreTrainedModel, device: torch.device | str = "cpu") -> PreTrainedModel:
    """Give a meta-device ``model`` real storage on ``device``, initialised as an eager build initialises it.

    ``to_empty`` allocates uninitialised memory and gives each module its own copy of a tied weight; the
    model's own initialisation (``init_weights``: ``_init_weights`` on every module, which also recomputes
    the non-persistent buffers such as RoPE's ``inv_freq``) then fills it; the tied weights are tied again.
    """
    model.to_empty(device=device)
    _forget_initialisation(model)
    model.init_weights()
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"still on the meta device after materialising: {', '.join(left)}")
    return model


def _forget_initialisation(model: torch.nn.Module) -> None:
    """Drop transformers' "already initialised" marks, which would make ``init_weights`` skip a module or
    tensor (a model moved to the meta device after an eager build carries them)."""
    for item in (*model.modules(), *model.parameters(), *model.buffers()):
        item.__dict__.pop("_is_hf_initialized", None)
