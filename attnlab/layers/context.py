"""What every token mixer receives besides the hidden states."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

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
    causal: whether a query sees only the keys up to itself (a decoder) or every key (an encoder); ``attend``,
        the relational forms and the relative symbols read it, so one mixer serves both.

    ``once`` makes a mixer's side effects (reading or writing the cache, publishing a penalty) happen once per
    forward, however often activation checkpointing runs the block.
    """

    position_ids: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    attn_mask: torch.Tensor | None = None
    key_padding_mask: torch.Tensor | None = None
    cache: Cache | None = None
    past_length: int = 0
    output_attentions: bool = False
    causal: bool = True
    _once: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time this forward asks for ``key``; that first result every later time.

        Activation checkpointing runs a block again in the backward, with this same context: a mixer that
        reads the cache, writes it or publishes something beside its output does it through ``once``, so that
        the recomputation reads what the forward read and writes nothing a second time.
        """
        if key not in self._once:
            self._once[key] = compute()
        return self._once[key]
