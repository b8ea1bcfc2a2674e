"""The shared softmax-attention core, and the baseline mixer built on it.

``attend`` is the one place that calls ``scaled_dot_product_attention``, chooses between the causal flag, the
context's padding/cache mask and a mixer's own mask, and materialises the weights when ``output_attentions``
asks for them. Every softmax-style mixer (GPT, DAT's self-attention and relational heads, LSW, MoA's metric
heads) computes its queries, keys and values its own way and then calls it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .context import MixerContext
from .masks import causal_mask
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


def repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Key/value heads (batch, kv_heads, ...) repeated to the query heads (batch, n_heads, ...) (GQA/MQA)."""
    groups = n_heads // t.shape[1]
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def softmax_weights(
    scores: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = True, inplace: bool = False
) -> torch.Tensor:
    """softmax over keys of (..., q_len, kv_len) scores.

    ``mask``: boolean "may attend", or a float bias added to the scores (−inf where not allowed), or None:
    causal (the queries are the last q_len positions) or, with ``causal=False``, nothing. ``inplace`` masks
    ``scores`` itself (a fresh matmul output nobody else needs): one N² buffer less.
    """
    if mask is not None and mask.dtype != torch.bool:
        return (scores.add_(mask) if inplace else scores + mask).softmax(dim=-1)
    if mask is None and not causal:
        return scores.softmax(dim=-1)
    if mask is None and inplace:  # only the last q_len keys can be ahead of a query
        q_len, kv_len = scores.shape[-2:]
        ahead = torch.ones(q_len, q_len, dtype=torch.bool, device=scores.device).triu(1)
        scores[..., kv_len - q_len :].masked_fill_(ahead, float("-inf"))
        return scores.softmax(dim=-1)
    if mask is None:
        mask = causal_mask(*scores.shape[-2:], device=scores.device)
    fill = scores.masked_fill_ if inplace else scores.masked_fill
    return fill(~mask, float("-inf")).softmax(dim=-1)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: MixerContext | None = None,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q·kᵀ·scale under the mask) · v → (output (batch, heads, q_len, v_dim), weights or None).

    q (batch, heads, q_len, d), k (batch, kv_heads, kv_len, d), v (batch, kv_heads, kv_len, v_dim); kv_heads
    divides heads (GQA). The mask is ``mask`` if given (boolean or float bias), else the context's
    ``attn_mask``, else causal (``causal=False`` or a non-causal context, an encoder's: none). Weights (batch,
    heads, q_len, kv_len) are returned when ``ctx.output_attentions``; ``scale`` defaults to 1/√d; ``dropout``
    is the probability to apply.
    """
    causal = causal and (ctx is None or ctx.causal)
    if mask is None and ctx is not None:
        mask = ctx.attn_mask
    if ctx is not None and ctx.output_attentions:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = (q @ repeat_kv(k, q.shape[1]).transpose(-2, -1)) * scale
        weights = softmax_weights(scores, mask, causal=causal)
        return F.dropout(weights, dropout) @ repeat_kv(v, q.shape[1]), weights
    q_len, kv_len = q.shape[-2], k.shape[-2]
    is_causal = causal and mask is None and q_len > 1
    if is_causal and q_len != kv_len:  # SDPA's causal flag aligns queries with the first keys, not the last
        mask, is_causal = causal_mask(q_len, kv_len, q.device), False
    if q.device.type == "cpu" and q.shape[-1] < v.shape[-1]:
        # PyTorch's CPU flash kernel needs one head width for q, k and v (else SDPA falls back to its math path
        # and materialises N×N): zero-padding q and k leaves q·k unchanged, the scale is given explicitly.
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        q, k = (F.pad(t, (0, v.shape[-1] - q.shape[-1])) for t in (q, k))
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return y, None


class CausalSelfAttention(nn.Module):
    """The baseline token mixer: causal softmax attention over n_heads queries and n_kv_heads keys.

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
        y, weights = self_attention(
            self.qkv(x), ctx, self.n_heads, self.n_kv_heads, self.head_dim,
            cache_slot=self.layer_idx, dropout=self.dropout if self.training else 0.0,
        )
        return self.out(y), weights


def self_attention(
    qkv: torch.Tensor,
    ctx: MixerContext,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    *,
    cache_slot: int,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax heads from a fused q/k/v projection: RoPE, the cache at ``cache_slot``, ``attend``.

    Returns the heads before the output projection, (batch, seq, n_heads·head_dim), and their weights.
    """
    q, k, v = split_heads(qkv, n_heads, n_kv_heads, head_dim)
    if ctx.rope is not None:
        q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
    if ctx.cache is not None:
        k, v = ctx.cache.update(k, v, cache_slot)
    y, weights = attend(q, k, v, ctx, dropout=dropout)
    return merge_heads(y), weights
