"""Causal softmax multi-head attention with grouped/multi-query key-value heads and a KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .context import MixerContext
from .rotary import apply_rotary


def split_heads(
    qkv: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused q/k/v projection (batch, seq, (n_heads + 2·n_kv_heads)·head_dim) → q (batch, n_heads, seq,
    head_dim) and k, v (batch, n_kv_heads, seq, head_dim): the layout every softmax-style mixer uses."""
    batch, seq, _ = qkv.shape
    q, k, v = qkv.split([n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=-1)
    q = q.view(batch, seq, n_heads, head_dim).transpose(1, 2)
    k, v = (t.view(batch, seq, n_kv_heads, head_dim).transpose(1, 2) for t in (k, v))
    return q, k, v


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, head_dim) → (batch, seq, heads·head_dim): the inverse layout of ``split_heads``."""
    return y.transpose(1, 2).flatten(2)


class CausalSelfAttention(nn.Module):
    """The baseline token mixer: ``scaled_dot_product_attention`` over n_heads queries and n_kv_heads keys.

    n_kv_heads == n_heads is standard MHA, 1 is MQA, anything dividing n_heads is GQA.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        layer_idx: int,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = d_model // n_heads
        self.layer_idx = layer_idx
        self.dropout = dropout
        kv_dim = self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, d_model + 2 * kv_dim, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.out.is_residual_projection = True

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = split_heads(self.qkv(x), self.n_heads, self.n_kv_heads, self.head_dim)
        if ctx.rope is not None:
            q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        if ctx.cache is not None:
            k, v = ctx.cache.update(k, v, self.layer_idx)

        weights = None
        if ctx.output_attentions:
            y, weights = self._explicit_attention(q, k, v, ctx)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=ctx.attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=ctx.attn_mask is None and ctx.past_length == 0 and q.shape[-2] > 1,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        y = merge_heads(y)
        return self.out(y), weights

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: MixerContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same attention with the probabilities materialised, for ``output_attentions`` and analysis."""
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        mask = ctx.attn_mask
        if mask is None:
            q_len, kv_len = q.shape[-2], k.shape[-2]
            q_index = torch.arange(q_len, device=q.device)[:, None] + (kv_len - q_len)
            mask = torch.arange(kv_len, device=q.device)[None, :] <= q_index
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return weights @ v, weights
