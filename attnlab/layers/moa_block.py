"""The residual block of the MoA metric LM: a routed mixture of heads, then a routed HyperFFN, each branch
with LayerScale and DropPath.

    x = x + DropPath(LayerScale(Σ_e w_e(x) · g_e(x) · FiLM_e(head_e(norm(x)))))
    x = x + DropPath(LayerScale(HyperFFN(norm(x))))
"""

from __future__ import annotations

import torch
from torch import nn

from .context import MixerContext
from .ffn import build_ffn
from .hyperffn import HyperFFN, LowRankFFN
from .moa_heads import LocalConvHead
from .norms import build_norm


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT), initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for whole sequences, scaling the rest by 1/(1−p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MoABlock(nn.Module):
    """Pre-norm block: routed mixture of heads, then the HyperFFN, each with LayerScale and DropPath."""

    def __init__(self, config, mixer: nn.Module, layer_idx: int):
        """``config``: a ``MoAMetricConfig`` (norm, widths, conv kernel, FFN rank and routing, LayerScale, DropPath)."""
        super().__init__()
        d = config.d_model
        self.mixer_norm = build_norm(config.norm, d, config.norm_eps)
        self.mixer = mixer
        self.mixer_dropout = nn.Dropout(config.dropout)
        self.mixer_scale = LayerScale(d, config.layer_scale_init)
        self.ffn_norm = build_norm(config.norm, d, config.norm_eps)
        mlp = build_ffn(config.ffn, d, config.d_ff, config.bias, config.dropout)
        mlp.down.is_residual_projection = True
        self.ffn = HyperFFN(
            mlp,
            LocalConvHead(d, config.conv_kernel, cache_key=f"{layer_idx}.ffn_conv", bias=config.bias),
            LowRankFFN(d, config.ffn_rank, bias=config.bias),
            d,
            top_k=config.ffn_top_k,
            routed=config.branch_router,
        )
        self.ffn_scale = LayerScale(d, config.layer_scale_init)
        self.drop_path = DropPath(config.drop_path)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        mixed, weights = self.mixer(self.mixer_norm(x), ctx)
        x = x + self.drop_path(self.mixer_scale(self.mixer_dropout(mixed)))
        x = x + self.drop_path(self.ffn_scale(self.ffn(self.ffn_norm(x), ctx)))
        return x, weights
