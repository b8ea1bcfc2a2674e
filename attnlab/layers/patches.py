"""Images to token embeddings for vision Transformers: non-overlapping patches, flattened and projected."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbedding(nn.Module):
    """(batch, channels, H, W) → (batch, (H/p)·(W/p), d_model): patches in raster order, each flattened as
    (p, p, channels) → LayerNorm → Linear → LayerNorm, the layout of the ``dual-attention`` package's vision
    models. Any H and W divisible by the patch size work."""

    def __init__(self, patch_size: int, num_channels: int, d_model: int, *, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.patch_size, self.num_channels = patch_size, num_channels
        patch_dim = patch_size * patch_size * num_channels
        self.patch_norm = nn.LayerNorm(patch_dim, eps=eps)
        self.proj = nn.Linear(patch_dim, d_model, bias=bias)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixel_values.shape
        p = self.patch_size
        if channels != self.num_channels or height % p or width % p:
            raise ValueError(
                f"expected images of {self.num_channels} channels with sides divisible by the patch size {p}, "
                f"got pixel_values of shape {tuple(pixel_values.shape)}"
            )
        patches = pixel_values.reshape(batch, channels, height // p, p, width // p, p)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, (height // p) * (width // p), p * p * channels)
        return self.norm(self.proj(self.patch_norm(patches)))
