"""Residual blocks of DAT's encoders and decoders: the skeleton's block, pre- or post-norm, and with cross-attention.

Sub-module names are the causal LM's (``mixer_norm``, ``mixer``, ``ffn_norm``, ``ffn``), so a layer's parameters
are named alike in every DAT model; a post-norm block reuses the same norms after the residual sums.
"""

from __future__ import annotations

import torch
from torch import nn

from ...layers.context import MixerContext
from ...layers.cross_attention import CrossAttention
from ...layers.norms import build_norm
from ..skeleton import Block


class EncoderBlock(Block):
    """Pre-norm: x + mixer(norm(x)), then x + ffn(norm(x)), exactly the skeleton's ``Block``. Post-norm
    (``norm_first=False``, the original Transformer's): norm(x + mixer(x)), then norm(x + ffn(x)).

    A pre-norm dual-attention mixer with relational heads owns its norm (it retrieves symbols from the block's
    input), so the block then has no ``mixer_norm`` of its own, as in the LM.
    """

    def __init__(self, config, mixer: nn.Module, *, norm_first: bool = True):
        super().__init__(config, mixer, mixer_norm=not getattr(mixer, "owns_norm", False))
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.norm_first:
            return super().forward(x, ctx)
        mixed, weights = self.mixer(x, ctx)
        x = self.mixer_norm(x + self.mixer_dropout(mixed))
        return self.ffn_norm(x + self.ffn(x)), weights


class DecoderBlock(EncoderBlock):
    """Causal dual attention, cross-attention over the encoder's output (``cross``, with ``cross_norm``), FFN;
    pre- or post-norm like ``EncoderBlock``. Relational heads only in the self-attention, as the authors."""

    def __init__(self, config, mixer: nn.Module, cross: CrossAttention, *, norm_first: bool = True):
        super().__init__(config, mixer, norm_first=norm_first)
        self.cross_norm = build_norm(config.norm, config.d_model, config.norm_eps)
        self.cross = cross
        self.cross_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, ctx: MixerContext, memory: torch.Tensor, memory_ctx: MixerContext
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x (batch, seq, d_model) under ``ctx`` (causal); memory (batch, source_len, d_model) under ``memory_ctx``.
        Returns (x, self-attention weights, cross-attention weights); weights only if asked for."""
        if self.norm_first:
            mixed, weights = self.mixer(self.mixer_norm(x), ctx)
            x = x + self.mixer_dropout(mixed)
            crossed, cross_weights = self.cross(self.cross_norm(x), memory, memory_ctx)
            x = x + self.cross_dropout(crossed)
            return x + self.ffn(self.ffn_norm(x)), weights, cross_weights
        mixed, weights = self.mixer(x, ctx)
        x = self.mixer_norm(x + self.mixer_dropout(mixed))
        crossed, cross_weights = self.cross(x, memory, memory_ctx)
        x = self.cross_norm(x + self.cross_dropout(crossed))
        return self.ffn_norm(x + self.ffn(x)), weights, cross_weights
