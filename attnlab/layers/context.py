"""What every token mixer receives besides the hidden states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache


@dataclass
class MixerContext:
    """Per-forward state computed once by the skeleton and shared by all layers.

    position_ids: (batch, seq) absolute positions of the current tokens (padding-aware).
    rope: (cos, sin) for ``position_ids`` when the model uses RoPE, else None.
    attn_mask: (batch, 1, seq, past+seq) boolean "may attend" mask for softmax mixers, or None when plain
        causal attention over [past; current] is exact (no padding).
    key_padding_mask: (batch, past+seq) boolean, True for real tokens, or None when there is no padding.
    cache: the generation cache (a transformers ``Cache``) or None.
    past_length: number of tokens already in the cache.
    output_attentions: whether mixers should return their attention weights.
    """

    position_ids: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    attn_mask: torch.Tensor | None = None
    key_padding_mask: torch.Tensor | None = None
    cache: Cache | None = None
    past_length: int = 0
    output_attentions: bool = False
