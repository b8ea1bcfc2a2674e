"""Model FLOPs (``FlopCounterMode``) and the device's measured matmul peak, the two halves of MFU.

FLOPs follow the usual MFU convention: matrix products only (``mm``/``addmm``/``bmm``/attention), 2 per
multiply-add, a Linear's bias and element-wise work (norms, activations, softmax, optimizer) not counted.
Attention counts the full T×T score matrix even when causal, as ``torch.utils.flop_counter`` does, so a
causal softmax model is charged for the masked half; linear-attention families are charged for what they
really multiply. PyTorch's counter has no formula for the CPU flash-attention kernel nor for oneDNN's dense
layer (which ``attnlab.ops.linear`` calls for fp32 CPU layers), so they are added here: without them,
attention and the layers would count as zero FLOPs on CPU. The peak is that of the faster of ``torch.mm``
and that dense-layer route, so MFU is measured against what the models can reach.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ..ops.linear import _ONEDNN, backend, linear
from .timing import Timing, time_fn

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """y = x·Wᵀ for x (..., K) and W (N, K): 2·K·N per row of x."""
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * x_shape[-1] * w_shape[0]


EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}
if _ONEDNN is not None:
    EXTRA_FORMULAS[_ONEDNN] = _onednn_linear_flop


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn()`` runs (forward, and backward if it calls it)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


def default_gemm_size(device: torch.device) -> int:
    """Big enough to reach the compute roof, small enough to take about a second on a laptop CPU."""
    return 8192 if device.type == "cuda" else 2048


def measure_peak_flops(
    device: torch.device, dtype: torch.dtype, size: int, *, warmup: int = 2, repeats: int = 5
) -> dict[str, float | int]:
    """FLOP/s of a ``size``×``size`` matrix product in ``dtype`` (median of ``repeats``): ``torch.mm``, or
    attnlab's dense-layer route (``attnlab.ops.linear``) where that is faster (fp32 on CPUs where it takes
    oneDNN).

    The median is used, like for the models, so both sides of MFU suffer the same noise.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    timings: list[Timing] = [time_fn(lambda _: torch.mm(a, b), device=device, warmup=warmup, repeats=repeats)]
    if device.type == "cpu" and dtype == torch.float32 and backend() == "onednn":
        with torch.no_grad():
            timings.append(time_fn(lambda _: linear(a, b), device=device, warmup=warmup, repeats=repeats))
    timing = min(timings, key=lambda t: t.median)
    flops = 2 * size**3
    return {"gemm_size": size, "flops_per_s": flops / timing.median, "best_flops_per_s": flops / min(timing.samples)}
