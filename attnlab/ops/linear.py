"""Dense layers (y = x·Wᵀ + b) through oneDNN's matrix multiply on CPUs where it beats PyTorch's BLAS.

PyTorch multiplies fp32 matrices on the CPU with MKL's ``sgemm``. On the AMD EPYC (AVX-512) this project is
measured on, that runs at about 85 GFLOP/s per core for a Transformer's shapes (2048 × 256 × 2048, 4096 × 128
× 512, ...), while oneDNN's kernels, which PyTorch ships too (``torch.ops.mkldnn._linear_pointwise``, what
Inductor calls for fused linears), reach 170–210 GFLOP/s on the same shapes. ``linear`` sends fp32 CPU
layers there, forward and backward (``_Linear``):

* forward  y = x·Wᵀ + b      one oneDNN call;
* input    dx = dy·W         the same call with Wᵀ as the weight (a transposed view, no copy);
* weight   dW = dyᵀ·x        one call whose output has the fewer rows (dyᵀ·x, or (xᵀ·dy)ᵀ), the faster
                             orientation for these skinny products;
* bias     db = Σ dy.

It is the same function up to the order of the sums inside each dot product (fp32 rounding, as between any
two BLAS libraries). Layers under 128 × 128 weights, where a oneDNN call's overhead (~10 µs) outweighs its
faster kernel, and everything else (other dtypes: fp64 reference tests, bf16 autocast, whose matmuls
PyTorch already sends to oneDNN; other devices; ``torch.compile``) take ``F.linear``. ``set_backend`` (or
``ATTNLAB_LINEAR=torch``) turns the route off.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
BACKENDS = ("auto", "onednn", "torch")
# Layers with fewer weights take F.linear: there a oneDNN call's ~10 µs overhead outweighs its faster kernel.
# The choice depends on the layer only, never on the number of rows, so that a batch and its micro-batches
# (gradient accumulation) go through the same kernels.
MIN_WEIGHTS = 128 * 128
_backend = os.environ.get("ATTNLAB_LINEAR", "auto")


def set_backend(name: str) -> None:
    """``onednn``, ``torch`` (plain ``F.linear``) or ``auto`` (oneDNN where it is built in and the CPU has
    AVX-512, the instruction set it was measured faster on)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def backend() -> str:
    """The backend fp32 CPU layers use now: ``onednn`` or ``torch``."""
    if _backend == "torch" or _ONEDNN is None or not torch.backends.mkldnn.is_available():
        return "torch"
    if _backend == "onednn":
        return "onednn"
    return "onednn" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "torch"


def _routed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
        and weight.device.type == "cpu" and weight.numel() >= MIN_WEIGHTS and x.numel() > 0
        and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
        and backend() == "onednn"
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN for fp32 CPU tensors (see the module docstring)."""
    if not _routed(x, weight):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)


def _call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _ONEDNN(x, weight, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    """y = x·Wᵀ + b with every product on oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()  # a strided view (a column slice) sends oneDNN to a
        ctx.save_for_backward(flat, weight)  # reference kernel hundreds of times slower; a copy costs microseconds
        ctx.has_bias, ctx.shape = bias is not None, x.shape
        return _call(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        flat, weight = ctx.saved_tensors
        grad = grad.reshape(-1, weight.shape[0]).contiguous()  # e.g. the gradient of one half of a concatenation
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _call(grad, weight.t()).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            out_features, in_features = weight.shape
            if out_features >= in_features:
                grad_weight = _call(flat.t(), grad.t()).t()  # (in, out) rows: the shorter side
            else:
                grad_weight = _call(grad.t(), flat.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) whose forward is ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

