"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``).

Each block of the skeleton (``model.model.layers``) is one FSDP unit, then the root (embeddings, final norm, LM
head and whatever else the model holds) is one more. Every process keeps 1/N of each parameter, its gradient
and its AdamW state; a unit's parameters are gathered just before it runs and freed after, and its gradients
are reduce-scattered as soon as its backward is done.

How the weights come to be sharded (``init_route``):

- ``seeded``: every process builds the model exactly as one process does (seeded, or the fine-tuning source,
  or the warm start), then shards it. The run starts from the same weights as a DDP or single-process run with
  the same seed, which is what makes FSDP and one process train alike. Each process holds the whole model on
  the CPU for a moment, as DDP does.
- ``meta``: the model is built on the meta device (no memory), sharded, and each process allocates and
  initialises only its shards (``attnlab.models.meta_init.materialize_sharded``). No process ever holds the
  whole model, so a 13 B preset can be trained on GPUs that could not hold it once. The values are drawn from
  the same distributions as an eager build's, deterministically for a seed and device type, whatever the
  number of processes, but they are not the eager build's values.
- ``auto`` (the default) takes ``seeded`` up to ``META_INIT_ABOVE`` parameters and ``meta`` above; a resume
  always takes ``meta``: its checkpoint brings the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

FSDP_INIT = ("auto", "seeded", "meta")
MIXED_PRECISION = ("none", "bf16")
META_INIT_ABOVE = 1_000_000_000  # parameters; above this ``auto`` builds on the meta device


def init_route(requested: str, parameters: int, *, resuming: bool, brings_weights: bool) -> str:
    """``seeded`` or ``meta``: how this start materialises the sharded model (see the module docstring).

    ``brings_weights``: the start copies weights from elsewhere (``init_from``, ``warm_start``), which only the
    seeded build does (``TrainConfig`` refuses ``meta`` with them)."""
    if resuming:
        return "meta"
    if requested == "auto":
        return "meta" if parameters > META_INIT_ABOVE and not brings_weights else "seeded"
    return requested


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The skeleton's block list, the FSDP units below the root."""
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(f"parallel fsdp shards the skeleton's blocks (model.model.layers); "
                          f"{type(model).__name__} has none")
    return blocks


def mixed_precision_policy(name: str):
    """``bf16``: parameters gathered and computed in bfloat16, gradients reduced in float32; ``none``: fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if name == "none":
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard(model: nn.Module, device: torch.device, *, mixed_precision: str = "none",
          cpu_offload: bool = False) -> nn.Module:
    """Apply ``fully_shard`` to every block, then to the root, over all processes of the default group.

    The model may be on the meta device (then materialise it after) or built (its parameters are moved to
    ``device`` and sharded). Returns the same module object, now an ``FSDPModule``."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh, "mp_policy": mixed_precision_policy(mixed_precision)}
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for block in blocks_of(model):
        fully_shard(block, **options)
        _pass_context_opaquely(block)
    fully_shard(model, **options)
    return model


class _Opaque:
    """A holder FSDP does not look into (not a dataclass, list, dict or tensor)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def _pass_context_opaquely(block: nn.Module) -> None:
    """Hand the block its ``MixerContext`` past FSDP's forward hook.

    FSDP2 rebuilds dataclass inputs that hold tensors requiring gradients (``dataclasses.replace``), to hook
    them for its post-backward; a block would then get a copy of the context instead of the one every block
    shares, and ``MixerContext.once`` (what a mixer publishes once per forward: LSW's memory, MoA's penalty)
    would break. FSDP needs only the hidden states for that hook, so the context goes around it: wrapped in a
    holder before FSDP's pre-forward hook, unwrapped after it.
    """

    def hide(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tuple(_Opaque(a) if _is_context(a) else a for a in args), kwargs

    def show(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tuple(a.value if isinstance(a, _Opaque) else a for a in args), kwargs

    block.register_forward_pre_hook(hide, prepend=True, with_kwargs=True)  # before FSDP's (also prepended)
    block.register_forward_pre_hook(show, with_kwargs=True)  # after it


def _is_context(value: Any) -> bool:
    from ..layers.context import MixerContext

    return isinstance(value, MixerContext)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process's CPU (empty elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
