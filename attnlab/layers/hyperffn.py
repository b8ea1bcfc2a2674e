"""HyperFFN: three feed-forward branches (MLP, causal separable conv, low-rank) mixed per token by a router.

The branch router is a linear map to three logits; p = softmax(logits). With top-k routing a token's output is
Σ_{b ∈ top-k(p)} p_b · f_b(x), the dense weighted sum restricted to its k best branches (no renormalisation, as in
Switch Transformers, so the router keeps a gradient even at k = 1). The per-token branches (MLP, low-rank) run
only on the tokens that chose them; the conv branch mixes positions, so it runs on every token (which also keeps
its generation state current) and is zeroed where not chosen. Without the router (``routed=False``) the output
is the plain mean of the three branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .context import MixerContext
from .moa_heads import LocalConvHead

BRANCHES = ("mlp", "conv", "lowrank")


class LowRankFFN(nn.Module):
    """D → rank → GELU → D: a cheap bottleneck branch."""

    def __init__(self, d_model: int, rank: int, bias: bool = True):
        super().__init__()
        self.down = nn.Linear(d_model, rank, bias=bias)
        self.up = nn.Linear(rank, d_model, bias=bias)
        self.up.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class HyperFFN(nn.Module):
    """Routed mixture of an MLP (per token), a ``LocalConvHead`` (causal, cached) and a ``LowRankFFN``."""

    def __init__(
        self, mlp: nn.Module, conv: LocalConvHead, lowrank: LowRankFFN, d_model: int, *, top_k: int, routed: bool
    ):
        super().__init__()
        if not 1 <= top_k <= len(BRANCHES):
            raise ValueError(f"top_k must be in 1..{len(BRANCHES)}, got {top_k}")
        self.mlp, self.conv, self.lowrank = mlp, conv, lowrank
        self.top_k, self.routed = top_k, routed
        self.router = nn.Linear(d_model, len(BRANCHES), bias=False) if routed else None

    def branch_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 3) weights of (mlp, conv, lowrank): router probabilities zeroed outside each token's top-k."""
        if self.router is None:
            return x.new_full((*x.shape[:-1], len(BRANCHES)), 1 / len(BRANCHES))
        probs = self.router(x).float().softmax(dim=-1)
        if self.top_k == len(BRANCHES):
            return probs
        top = probs.topk(self.top_k, dim=-1).indices
        return probs * torch.zeros_like(probs).scatter_(-1, top, 1.0)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        weights = self.branch_weights(x)
        conv = self.conv(x, ctx)[0] * weights[..., 1:2]
        if self.top_k == len(BRANCHES) or self.router is None:
            return (conv + self.mlp(x) * weights[..., 0:1] + self.lowrank(x) * weights[..., 2:3]).to(x.dtype)
        out = conv.to(x.dtype).flatten(0, 1)
        flat_x, flat_w = x.flatten(0, 1), weights.flatten(0, 1)
        for b, branch in ((0, self.mlp), (2, self.lowrank)):
            rows = flat_w[:, b].nonzero().squeeze(1)
            out = out.index_add(0, rows, (branch(flat_x[rows]) * flat_w[rows, b, None]).to(out.dtype))
        return out.view_as(x)
