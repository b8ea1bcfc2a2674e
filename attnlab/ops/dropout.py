"""Dropout whose CPU mask costs a third of ``F.dropout``'s.

On the CPU, ``F.dropout`` draws one Bernoulli variable per element (``bernoulli_``): about 5 ns per element
on the 2-core AMD EPYC this project is measured on, 12 % of a small LEAP model's training step at 512 tokens.
Here the mask comes from 64-bit random words, each cut into four 16-bit lanes: an element is kept when its
lane is at or above ``round(p · 2^16)``, and kept elements are scaled by ``2^16 / (2^16 − round(p · 2^16))``
so that the expectation is unchanged. The drop probability is thus p rounded to a multiple of 2^-16
(0.1 becomes 0.100006); the mask is drawn from torch's default generator, so ``torch.manual_seed`` and a
saved RNG state reproduce it. The forward is 2.7× faster than ``F.dropout`` at 2 × 512 × 128; the backward
is the same product.

Other devices (CUDA's fused dropout is already fast), ``torch.compile`` and probabilities that round to 0
or 1 take ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LANES = 1 << 16  # values of one 16-bit lane


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with a cheaper mask on the CPU (see the module docstring)."""
    if not training or p == 0.0:
        return x
    threshold = round(p * LANES)
    if x.device.type != "cpu" or not 0 < threshold < LANES or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    return _Dropout.apply(x, keep_mask(x.shape, threshold), LANES / (LANES - threshold))


def keep_mask(shape: torch.Size, threshold: int) -> torch.Tensor:
    """Boolean mask of ``shape``, each element True with probability 1 − threshold / 2^16."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # every bit uniform
    lanes = words.view(torch.int16)[:count].view(shape)  # values −2^15 … 2^15 − 1, each equally likely
    return lanes >= threshold - LANES // 2


class _Dropout(torch.autograd.Function):
    """y = x · keep · scale; dx = dy · keep · scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.mul(x, keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` computed by ``dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)

