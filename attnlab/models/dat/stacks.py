"""The layer stacks of DAT's encoder-based models, and what those models share.

A ``DualAttentionStack`` is n layers of dual attention and the final norm: an encoder (non-causal, padding
masked) or, given cross-attention heads, a decoder (causal dual attention, cross-attention over the encoder's
output). The sequence-to-sequence and vision models put their embeddings in front and their heads behind.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from transformers.cache_utils import Cache

from ...layers.context import MixerContext
from ...layers.cross_attention import CrossAttention
from ...layers.dual_attention import DualAttention, init_dual_attention_weights
from ...layers.masks import attention_bias_mask, padding_mask
from ...layers.norms import build_norm
from ...layers.rotary import RotaryEmbedding
from ..skeleton import AttnLabPreTrainedModel
from .blocks import DecoderBlock, EncoderBlock


class StackOutput(NamedTuple):
    hidden: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None  # every layer's input and the final output, if asked for
    attentions: tuple[torch.Tensor | None, ...] | None  # every layer's (self-)attention weights, if asked for
    cross_attentions: tuple[torch.Tensor | None, ...] | None  # a decoder's cross-attention weights, if asked for


class DualAttentionStack(nn.Module):
    """``n_layers`` dual-attention blocks and the final norm (none after post-norm blocks, or without
    ``final_norm``). ``cross_heads`` makes it a decoder: causal, each block with cross-attention.

    ``config`` is a ``DATConfig`` with ``norm_first`` and ``final_norm`` (or a ``StackView`` of one); the
    symbol retriever is the model's, shared by every layer of every stack.
    """

    def __init__(self, config, symbol_retriever: nn.Module | None, n_layers: int, *, cross_heads: int | None = None):
        super().__init__()
        self.causal = cross_heads is not None
        self.layers = nn.ModuleList(
            self._block(config, symbol_retriever, i, cross_heads) for i in range(n_layers)
        )
        with_norm = config.norm_first and config.final_norm
        self.norm = build_norm(config.norm, config.d_model, config.norm_eps) if with_norm else nn.Identity()
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.pos == "rope" else None

    @staticmethod
    def _block(config, symbol_retriever: nn.Module | None, layer_idx: int, cross_heads: int | None) -> nn.Module:
        mixer = DualAttention(config, layer_idx, symbol_retriever, norm_input=config.norm_first)
        if cross_heads is None:
            return EncoderBlock(config, mixer, norm_first=config.norm_first)
        cross = CrossAttention(config.d_model, cross_heads, config.kv_heads(cross_heads), layer_idx=layer_idx,
                               bias=config.bias, dropout=config.dropout)
        return DecoderBlock(config, mixer, cross, norm_first=config.norm_first)

    def context(
        self,
        position_ids: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        *,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> MixerContext:
        """What this stack's mixers share: a causal mask over [cache; current] (decoder) or the padding (encoder)."""
        past = cache.get_seq_length() if cache is not None else 0
        q_len = position_ids.shape[1]
        if self.causal:
            mask = attention_bias_mask(key_padding_mask, q_len, past, position_ids.device)
        else:
            mask = padding_mask(key_padding_mask)
        return MixerContext(
            position_ids=position_ids,
            rope=self.rotary(position_ids) if self.rotary is not None else None,
            attn_mask=mask,
            key_padding_mask=key_padding_mask,
            cache=cache,
            past_length=past,
            output_attentions=output_attentions,
            causal=self.causal,
        )

    def run(
        self,
        x: torch.Tensor,
        ctx: MixerContext,
        *,
        memory: torch.Tensor | None = None,
        memory_ctx: MixerContext | None = None,
        output_hidden_states: bool = False,
    ) -> StackOutput:
        """The blocks and the final norm over embedded inputs ``x``; a decoder also gets the memory and its context."""
        hidden_states, attentions, cross_attentions = [], [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden_states.append(x)
            if self.causal:
                x, weights, cross_weights = layer(x, ctx, memory, memory_ctx)
                cross_attentions.append(cross_weights)
            else:
                x, weights = layer(x, ctx)
            attentions.append(weights)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states.append(x)
        asked = ctx.output_attentions
        return StackOutput(
            x,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if asked else None,
            tuple(cross_attentions) if asked and self.causal else None,
        )


class DATPreTrainedModel(AttnLabPreTrainedModel):
    """DAT's encoder-based models: the LM's initialisation (GPT-2's, plus the relational and symbol parameters)."""

    _no_split_modules = ["EncoderBlock", "DecoderBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_dual_attention_weights(module, self.config.initializer_range)
