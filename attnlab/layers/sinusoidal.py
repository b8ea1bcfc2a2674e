"""Fixed sinusoidal positions (Vaswani et al. 2017), as the DAT authors' sequence-to-sequence models add them."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPositions(nn.Module):
    """pe[pos, 2k] = sin(pos·ω_k), pe[pos, 2k+1] = cos(pos·ω_k), ω_k = 10000^(−2k/d): interleaved as in the
    ``dual-attention`` package, computed for the given positions (no table, so no length limit, no parameters)."""

    def __init__(self, d_model: int, base: float = 10000.0):
        super().__init__()
        self.d_model, self.base = d_model, base

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(batch, seq) positions → (batch, seq, d_model) encodings."""
        frequencies = torch.exp(
            torch.arange(0, self.d_model, 2, device=position_ids.device, dtype=torch.float64)
            * (-math.log(self.base) / self.d_model)
        )
        angles = position_ids.to(torch.float64)[..., None] * frequencies
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., : self.d_model]
        return pe.to(dtype)
