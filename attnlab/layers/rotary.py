"""Rotary position embedding (Su et al. 2021), rotate-half convention as in LLaMA/GPT-NeoX."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Returns (cos, sin) of shape (batch, seq, head_dim) for integer positions; no learned parameters."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        self.theta = theta
        self.register_buffer("inv_freq", rope_inverse_frequencies(head_dim, theta), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in fp32 even under autocast: positions in the thousands lose too much in bf16.
        angles = position_ids.float()[..., None] * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def rope_inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(-2k/d) for k < d/2, computed in fp64 and stored in fp32."""
    return (1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)).float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape (batch, heads, seq, head_dim) by the (batch, seq, head_dim) angles.

    x·cos + rotate_half(x)·sin as x·cos plus the rotated halves added in place (``_Rotary``): no rotated copy, no
    concatenation, and a backward of the same two passes (the transposed rotation) instead of autograd's
    chain through chunk, neg and cat. Angles that need a gradient take the plain formula.
    """
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    if cos.requires_grad or sin.requires_grad:
        return x * cos + rotate_half(x) * sin
    return _Rotary.apply(x, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """[x1·c1 − x2·s1, x2·c2 + x1·s2] for the halves of the last axis (the rotation), or with ``transpose``
    [x1·c1 + x2·s2, x2·c2 − x1·s1] (its transpose: the backward of the rotation)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    sin1, sin2, sign = sin[..., :half], sin[..., half:], 1.0
    if transpose:
        sin1, sin2, sign = sin2, sin1, -1.0
    out = x * cos
    out[..., :half].addcmul_(x2, sin1, value=-sign)
    out[..., half:].addcmul_(x1, sin2, value=sign)
    return out


class _Rotary(torch.autograd.Function):
    """RoPE of ``x`` by constant angles; the gradient is the rotation by the opposite angles."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, transpose=True), None, None
