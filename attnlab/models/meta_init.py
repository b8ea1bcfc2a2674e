"""Build a model without allocating it, then materialise it where it will live.

``build_on_meta`` builds any preset on ``torch.device("meta")``: every parameter and buffer has its shape and
dtype but no storage, so a 13 B model (``lsw:xxl``, 52 GB in fp32) costs no memory. Its parameters can be
counted, its modules inspected and a sharding plan made from it; ``materialize`` then allocates the storage on
a device and initialises it exactly as an eager build does.

Sharded (FSDP) training takes this route for big models: the meta model is sharded first
(``attnlab.training.fsdp.shard``), then ``materialize_sharded`` allocates and initialises each process's
shards only. ``assemble_model`` goes the other way: a plain model around a full state dict (a gathered FSDP
model, a consolidated sharded checkpoint) without copying it.
"""

from __future__ import annotations

import contextlib
import zlib

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


def materialize_sharded(
    model: torch.nn.Module,
    device: torch.device | str,
    seed: int | None,
    modules: list[torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """Allocate a meta-built model that FSDP has sharded, and initialise every process's shards.

    Only each process's shard of a parameter is allocated for good (``to_empty`` on the sharded model). The
    initial values are drawn module by module: the module's own parameters are drawn whole by the model's
    ``_init_weights``, from a generator seeded with (``seed``, the module's name), and each process keeps its
    shard. So the values depend on the seed and the device type only, not on the number of processes (on the
    CPU, DTensor's random ops would give every process the same shard values), and what a module costs beyond
    the shards is its own parameters, once, while it is drawn. ``seed=None`` (a resume: the checkpoint brings
    the weights) computes only the buffers a checkpoint does not hold, such as RoPE's ``inv_freq``.

    ``modules`` materialises only those submodules (and the modules inside them), e.g. a few blocks of a
    model too large for this machine; by default the whole model, checked to leave nothing on the meta
    device. A parameter that the model's ``_init_weights`` leaves unset is an error naming it.
    """
    targets = [model] if modules is None else list(modules)
    for target in targets:
        target.to_empty(device=device)
    _forget_initialisation(model)
    inside = {id(m) for target in targets for m in target.modules()}
    drawn: set[int] = set()  # a tied parameter is drawn once, by the first module that holds it
    for name, module in model.named_modules():
        if id(module) not in inside or (seed is None and not module._non_persistent_buffers_set):
            continue
        _init_module(model, name, module, torch.device(device), seed, drawn)
    if modules is None:
        left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
        if left:
            raise RuntimeError(f"still on the meta device after materialising: {', '.join(left)}")
    return model


@torch.no_grad()
def _init_module(model, name: str, module: torch.nn.Module, device: torch.device, seed: int | None,
                 drawn: set[int]) -> None:
    """Run ``_init_weights`` on ``module`` with its own parameters drawn whole into scratch tensors, and keep
    this process's shard of each (``seed=None``: only the buffers are kept)."""
    generators = [device] if device.type == "cuda" else []
    with _scratch_parameters(module, device) as whole, torch.random.fork_rng(devices=generators):
        torch.manual_seed(_module_seed(seed or 0, name))
        model._init_weights(module)
    if seed is None:
        return
    for key, (param, tensor) in whole.items():
        if id(param) in drawn:
            continue
        if torch.isnan(tensor).any():
            owner = next(c.__name__ for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
            raise RuntimeError(f"{name}.{key} is not initialised by {owner}._init_weights: a model built on the "
                               "meta device cannot be materialised without it")
        param.copy_(_shard_like(tensor, param))
        drawn.add(id(param))


@contextlib.contextmanager
def _scratch_parameters(module: torch.nn.Module, device: torch.device):
    """Swap ``module``'s own parameters for whole NaN-filled tensors on ``device`` while the block runs (an
    initialisation then writes those, never the parameters); yields ``{name: (parameter, scratch tensor)}``."""
    own = {key: p for key, p in module._parameters.items() if p is not None}
    whole = {key: (p, torch.full(p.shape, float("nan"), dtype=p.dtype, device=device)) for key, p in own.items()}
    try:
        for key, (_, tensor) in whole.items():
            module._parameters[key] = torch.nn.Parameter(tensor, requires_grad=False)
        yield whole
    finally:
        module._parameters.update(own)


def _module_seed(seed: int, name: str) -> int:
    """A seed per (seed, module name), the same in every process and Python run (``hash()`` is salted)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def _shard_like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``param``: this process's shard when ``param`` is a DTensor (no communication:
    every process drew the same whole tensor), else ``whole`` itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(whole.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    return whole.to(param.device)


def assemble_model(
    model_class: type[PreTrainedModel], config, state_dict: dict[str, torch.Tensor]
) -> PreTrainedModel:
    """A plain (unsharded) model of ``model_class`` around the tensors of a full ``state_dict``, with no second
    copy of them: built on the meta device, the tensors assigned as they are, the tied weights tied again and
    the buffers a state dict does not hold (RoPE's ``inv_freq``) computed. What a gathered FSDP model or a
    consolidated sharded checkpoint is saved from."""
    with torch.device("meta"):
        model = model_class(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise RuntimeError(f"the state dict does not fit {model_class.__name__}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    model.tie_weights()
    for module in model.modules():
        meta = {key: b for key, b in module._buffers.items() if b is not None and b.is_meta}
        if meta:
            module._buffers.update({key: torch.empty_like(b, device="cpu") for key, b in meta.items()})
            with _scratch_parameters(module, torch.device("cpu")):
                model._init_weights(module)
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"not in the state dict and not computable: {', '.join(left)}")
    return model
