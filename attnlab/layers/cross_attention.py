"""Cross-attention of a decoder over the encoder's final hidden states (the memory), with its generation cache."""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache

from .attention import attend, merge_heads
from .context import MixerContext


class CrossAttention(nn.Module):
    """Softmax attention of the decoder's positions over the memory: q from the decoder, k/v from the memory.

    ``ctx`` is the memory's context: non-causal, its ``attn_mask`` the encoder's padding (``padding_mask``), its
    ``cache`` the model's ``EncoderDecoderCache``, whose cross-attention half keeps this layer's memory keys and
    values, computed once per generation (the memory does not change while the decoder generates).
    """

    def __init__(
        self, d_model: int, n_heads: int, n_kv_heads: int, *, layer_idx: int, bias: bool = True, dropout: float = 0.0
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.layer_idx, self.dropout = layer_idx, dropout
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.kv = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.out.is_residual_projection = True

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, ctx: MixerContext
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (batch, seq, d_model) attends to memory (batch, source_len, d_model) → (output, weights or None)."""
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self._memory_keys_values(memory, ctx.cache)
        y, weights = attend(q, k, v, ctx, causal=False, dropout=self.dropout if self.training else 0.0)
        return self.out(merge_heads(y)), weights

    def _memory_keys_values(
        self, memory: torch.Tensor, cache: EncoderDecoderCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory's keys and values: from the cache once it holds them, else projected (and cached)."""
        if cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        k, v = (t.unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2) for t in self.kv(memory).chunk(2, -1))
        if cache is not None:
            k, v = cache.cross_attention_cache.update(k, v, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return k, v
