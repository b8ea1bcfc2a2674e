"""Normalisation layers selectable by name."""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("layernorm", "rmsnorm")


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x / √(mean(x²) + eps) · weight over the last axis, with a hand-written backward (``_RMSNorm``).

    The same function as ``torch.nn.functional.rms_norm``, whose CPU backward is assembled from a dozen
    element-wise autograd nodes (3–4× the time of a LayerNorm's, measured at 2048 × 256); this one saves the
    normalised input and its reciprocal RMS and does the backward in four passes. Statistics are taken in at
    least fp32; the output has the input's dtype, as torch's has.
    """
    if weight is None:
        weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    return _RMSNorm.apply(x, weight, eps)


class _RMSNorm(torch.autograd.Function):
    """y = x̂·w with x̂ = x·r, r = (mean(x²) + eps)^(-1/2). Backward: dw = Σ_rows dy·x̂ and
    dx = r·(dy·w − x̂·mean(dy·w·x̂))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        stat = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            xs = x.to(stat)
            rstd = torch.linalg.vector_norm(xs, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
            normed = xs * rstd
            out = (normed * weight.to(stat)).to(x.dtype)
        ctx.save_for_backward(normed, weight, rstd)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        normed, weight, rstd = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.to(normed.dtype)
            grad_weight = None
            if ctx.needs_input_grad[1]:
                grad_weight = (grad * normed).flatten(0, -2).sum(0).to(weight.dtype)
            grad_x = None
            if ctx.needs_input_grad[0]:
                scaled = grad * weight.to(normed.dtype)
                dot = (scaled * normed).mean(-1, keepdim=True)
                grad_x = scaled.addcmul_(normed, dot, value=-1).mul_(rstd).to(ctx.x_dtype)
        return grad_x, grad_weight, None


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same parameters and state dict) computed by ``rms_norm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(self.normalized_shape) != (x.shape[-1],):  # several trailing axes: torch's own
            return super().forward(x)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return rms_norm(x, self.weight, eps)


def build_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """``layernorm`` (with bias, as in GPT-2) or ``rmsnorm`` (as in LLaMA)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
