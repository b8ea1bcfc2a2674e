"""Peak memory of one call: the highest total of live tensor bytes while it runs.

* CUDA: the caching allocator's own statistics (``reset_peak_memory_stats`` / ``max_memory_allocated``),
  which include everything already resident (weights, optimizer state, inputs).
* CPU: there is no allocator peak counter, and the process RSS is monotone and shared with everything else.
  So the call runs once under ``torch.profiler`` with ``profile_memory=True``; every CPU allocation and free
  is an event with its size, their running sum over time is the net live bytes allocated by the call, and
  its maximum is added to the bytes of the tensors that were live before it (``resident`` — weights,
  buffers, optimizer state, inputs; shared storages counted once). This is exact for tensors allocated
  through PyTorch's CPU allocator, including temporaries freed inside the call, and ignores memory that
  kernels take from elsewhere (oneDNN scratch, Python objects).

``cache_tensors`` finds the tensors a generation cache holds, whatever its class (decode rows' cache bytes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers import PreTrainedConfig

# Kineto prints "profiler_start/stop" lines to stderr on every profile; level 6 keeps it quiet (set the
# variable yourself to see them). It must be set before the first profiler use.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied or viewed tensors counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    """Every tensor a training or inference step keeps alive between calls."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def cache_tensors(cache: Any, depth: int = 6) -> list[torch.Tensor]:
    """The tensors a generation cache or memory holds, whatever its class (KV lists, recurrent states, dicts).

    Walks lists, tuples, dicts and plain objects' attributes; never into modules, classes or configs, so a
    cache that refers to its model does not count the weights.
    """
    found: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(obj: Any, level: int) -> None:
        if isinstance(obj, torch.Tensor):
            found.append(obj)
            return
        if level > depth or id(obj) in seen or isinstance(obj, (torch.nn.Module, type, str, bytes, PreTrainedConfig)):
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            items = obj.values()
        elif isinstance(obj, (list, tuple, set)):
            items = obj
        else:
            items = vars(obj).values() if hasattr(obj, "__dict__") else ()
        for item in items:
            walk(item, level + 1)

    if cache is not None:
        walk(cache, 0)
    return found


def peak_memory_bytes(
    fn: Callable[[], None], device: torch.device, resident: Iterable[torch.Tensor] = ()
) -> int | None:
    """Peak live tensor bytes on ``device`` while ``fn()`` runs (None on a device neither method covers)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "cpu":
        return tensor_bytes(resident) + _cpu_peak_delta(fn)
    return None


def _cpu_peak_delta(fn: Callable[[], None]) -> int:
    """Maximum over time of (bytes allocated - bytes freed) on the CPU since ``fn`` started."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            changes.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(changes):
        live += size
        peak = max(peak, live)
    return peak
