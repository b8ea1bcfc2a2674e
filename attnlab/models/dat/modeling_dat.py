"""Dual Attention Transformer LM: the skeleton with dual attention (self-attention + relational heads).

One symbol retriever is shared by all layers (the authors' default) and lives on the model
(``symbol_retriever.*``); each layer retrieves its symbols from its own input, the residual stream before
the block's norm, as the authors do. A DAT layer with relational heads therefore takes over its block's
pre-norm (``mixer.norm``); with ``n_heads_ra=0`` nothing moves and the model is the GPT baseline, parameter
name for parameter name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import DynamicCache

from ...layers.attention import merge_heads, split_heads
from ...layers.context import MixerContext
from ...layers.relational import RelationalAttention, causal_softmax
from ...layers.rotary import apply_rotary
from ...layers.symbols import PositionalSymbols, RelativeSymbols, SymbolicAttention
from ..skeleton import AttnLabForCausalLM
from .configuration_dat import DATConfig


class DATCache(DynamicCache):
    """Two cache slots per layer: 2·i holds the self-attention keys/values, 2·i+1 the relational heads'
    score keys with [past symbol values ; relation keys] (see ``RelationalAttention``)."""

    @staticmethod
    def slots(layer_idx: int) -> tuple[int, int]:
        return 2 * layer_idx, 2 * layer_idx + 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen by ``layer_idx``, whichever of its head kinds exists."""
        return max((self.layers[s].get_seq_length() for s in self.slots(layer_idx) if s < len(self.layers)), default=0)


def build_symbol_retriever(config: DATConfig) -> nn.Module:
    if config.symbol_retrieval == "positional":
        return PositionalSymbols(config.d_model, config.block_size)
    if config.symbol_retrieval == "position_relative":
        return RelativeSymbols(config.d_model, config.max_rel_pos)
    return SymbolicAttention(
        config.d_model, config.symbol_heads, config.n_symbols, trainable=config.trainable_symbols, bias=config.bias
    )


class DualAttention(nn.Module):
    """n_heads_sa softmax heads and n_heads_ra relational heads side by side, then the output projection.

    Heads are d_model / (n_heads_sa + n_heads_ra) wide; the output is out([SA heads ; RA heads]), or with
    ``out_proj="per_kind"`` [out(SA heads) ; out_ra(RA heads)] (the authors' layout: half the projection's
    parameters and FLOPs when both kinds have half the heads). The self-attention heads are computed exactly
    as ``CausalSelfAttention`` computes them (same ``qkv`` layout), so n_heads_ra=0 is the baseline bit for bit.
    """

    def __init__(self, config: DATConfig, layer_idx: int, symbol_retriever: nn.Module | None):
        super().__init__()
        self.n_sa, self.n_ra, self.head_dim = config.n_heads_sa, config.n_heads_ra, config.head_dim
        self.kv_sa = config.kv_heads(self.n_sa)
        self.sa_slot, ra_slot = DATCache.slots(layer_idx)
        self.dropout = config.dropout
        if self.n_sa:
            self.qkv = nn.Linear(config.d_model, (self.n_sa + 2 * self.kv_sa) * self.head_dim, bias=config.bias)
        if self.n_ra:
            self.relational = RelationalAttention(
                config.d_model,
                self.n_ra,
                self.head_dim,
                config.kv_heads(self.n_ra),
                config.n_relations,
                config.rel_proj_dim,
                cache_slot=ra_slot,
                symmetric=config.symmetric_rels,
                activation=config.rel_activation,
                form=config.rel_form,
                relative_symbols=config.symbol_retrieval == "position_relative",
                bias=config.bias,
                dropout=config.dropout,
            )
        self.per_kind = config.out_proj == "per_kind" and self.n_sa > 0 and self.n_ra > 0
        sa_width = self.n_sa * self.head_dim if self.per_kind else config.d_model
        self.out = nn.Linear(sa_width, sa_width, bias=config.bias)
        self.out.is_residual_projection = True
        if self.per_kind:
            ra_width = self.n_ra * self.head_dim
            self.out_ra = nn.Linear(ra_width, ra_width, bias=config.bias)
            self.out_ra.is_residual_projection = True
        self.norm: nn.Module | None = None  # the block's pre-norm, handed over by DATForCausalLM when n_ra > 0
        # Shared by every layer and registered once, on the model: keep it out of this module's children.
        self._symbol_retriever = (symbol_retriever,)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x is the block's input when this layer owns the pre-norm (relational heads), else already normed."""
        heads = []
        if self.n_ra:
            symbols = self._symbol_retriever[0](x, ctx)
            x = self.norm(x)
        if self.n_sa:
            heads.append(self._self_attention(x, ctx))
        if self.n_ra:
            heads.append(self.relational(x, symbols, ctx))
        outputs, weights = zip(*heads)
        weights = torch.cat(weights, dim=1) if ctx.output_attentions else None
        if self.per_kind:
            return torch.cat([self.out(outputs[0]), self.out_ra(outputs[1])], dim=-1), weights
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return self.out(y), weights

    def _self_attention(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = split_heads(self.qkv(x), self.n_sa, self.kv_sa, self.head_dim)
        if ctx.rope is not None:
            q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        if ctx.cache is not None:
            k, v = ctx.cache.update(k, v, self.sa_slot)
        weights = None
        if ctx.output_attentions:
            groups = self.n_sa // self.kv_sa
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            weights = causal_softmax((q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim), ctx)
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=ctx.attn_mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=ctx.attn_mask is None and ctx.past_length == 0 and q.shape[-2] > 1,
                enable_gqa=self.kv_sa != self.n_sa,
            )
        return merge_heads(y), weights


class DATForCausalLM(AttnLabForCausalLM):
    config_class = DATConfig

    def __init__(self, config: DATConfig):
        super().__init__(config)
        if config.n_heads_ra:  # symbols come from the un-normalised input: the mixer applies the pre-norm
            for block in self.model.layers:
                block.mixer.norm, block.mixer_norm = block.mixer_norm, nn.Identity()

    def build_mixer(self, config: DATConfig, layer_idx: int) -> nn.Module:
        if layer_idx == 0 and config.n_heads_ra:
            self.symbol_retriever = build_symbol_retriever(config)  # one library for all layers
        return DualAttention(config, layer_idx, getattr(self, "symbol_retriever", None))

    def make_cache(self) -> DATCache:
        return DATCache()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init for linears/embeddings/norms; W_r ~ N(0, 0.02), symbol libraries as the authors."""
        super()._init_weights(module)
        if isinstance(module, RelationalAttention):
            init.normal_(module.w_r, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, SymbolicAttention):
            init.normal_(module.templates, mean=0.0, std=1.0)
            init.normal_(module.library, mean=0.0, std=1.0)
        elif isinstance(module, RelativeSymbols):
            init.xavier_uniform_(module.table)
