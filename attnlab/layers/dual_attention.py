"""Dual attention (Altabaa & Lafferty 2024, arXiv 2405.16727): self-attention and relational heads side by
side, the symbol retrievers' factory, and the generation cache that holds both kinds of heads."""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import DynamicCache

from .attention import self_attention
from .context import MixerContext
from .norms import build_norm
from .relational import RelationalAttention
from .symbols import PositionalSymbols, RelativeSymbols, SymbolicAttention


class DATCache(DynamicCache):
    """Two cache slots per layer: 2·i holds the self-attention keys/values, 2·i+1 the relational heads'
    score keys with [past symbol values ; relation keys] (see ``RelationalAttention``)."""

    @staticmethod
    def slots(layer_idx: int) -> tuple[int, int]:
        return 2 * layer_idx, 2 * layer_idx + 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen by ``layer_idx``, whichever of its head kinds exists."""
        return max((self.layers[s].get_seq_length() for s in self.slots(layer_idx) if s < len(self.layers)), default=0)


def build_symbol_retriever(config, *, max_length: int | None = None, bidirectional: bool = False) -> nn.Module:
    """The retriever ``config.symbol_retrieval`` names (a ``DATConfig``): one is shared by all layers.

    ``max_length``: positions the positional library covers (default ``config.block_size``); ``bidirectional``:
    relative symbols for offsets of both signs, for a model with non-causal (encoder) layers.
    """
    if config.symbol_retrieval == "positional":
        return PositionalSymbols(config.d_model, max_length or config.block_size)
    if config.symbol_retrieval == "position_relative":
        return RelativeSymbols(config.d_model, config.max_rel_pos, bidirectional=bidirectional)
    return SymbolicAttention(
        config.d_model, config.symbol_heads, config.n_symbols, trainable=config.trainable_symbols, bias=config.bias
    )


@torch.no_grad()
def init_dual_attention_weights(module: nn.Module, std: float) -> None:
    """What dual attention adds to the GPT-2 init: W_r ~ N(0, std); symbol libraries as the authors'."""
    if isinstance(module, RelationalAttention):
        init.normal_(module.w_r, mean=0.0, std=std)
    elif isinstance(module, SymbolicAttention):
        init.normal_(module.templates, mean=0.0, std=1.0)
        init.normal_(module.library, mean=0.0, std=1.0)
    elif isinstance(module, RelativeSymbols):
        init.xavier_uniform_(module.table)


class DualAttention(nn.Module):
    """n_heads_sa softmax heads and n_heads_ra relational heads side by side, then the output projection.

    Heads are d_model / (n_heads_sa + n_heads_ra) wide; the output is out([SA heads ; RA heads]), or with
    ``out_proj="per_kind"`` [out(SA heads) ; out_ra(RA heads)] (the authors' layout: half the projection's
    parameters and FLOPs when both kinds have half the heads). The self-attention heads are computed exactly
    as ``CausalSelfAttention`` computes them (same ``qkv`` layout), so n_heads_ra=0 is the baseline bit for bit.

    With relational heads the layer receives the block's *input*: symbols are retrieved from the residual
    stream before the norm, as the authors do, so the mixer owns the block's pre-norm (``norm``) and the
    block gets none (``owns_norm``). Without them nothing moves and the names are the GPT baseline's. In a
    post-norm block (``norm_input=False``) the mixer gets the un-normalised input anyway and owns no norm.
    Whether the heads are causal is the context's (``MixerContext.causal``): the same layer serves a decoder
    and an encoder.
    """

    def __init__(self, config, layer_idx: int, symbol_retriever: nn.Module | None, *, norm_input: bool = True):
        super().__init__()
        self.n_sa, self.n_ra, self.head_dim = config.n_heads_sa, config.n_heads_ra, config.head_dim
        self.kv_sa = config.kv_heads(self.n_sa)
        self.sa_slot, ra_slot = DATCache.slots(layer_idx)
        self.dropout = config.dropout
        self.owns_norm = self.n_ra > 0 and norm_input
        if self.owns_norm:
            self.norm = build_norm(config.norm, config.d_model, config.norm_eps)
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
        # Shared by every layer and registered once, on the model: keep it out of this module's children.
        self._symbol_retriever = (symbol_retriever,)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x is the block's input when this layer owns the pre-norm (relational heads), else already normed."""
        heads = []
        if self.n_ra:
            symbols = self._symbol_retriever[0](x, ctx)
        if self.owns_norm:
            x = self.norm(x)
        if self.n_sa:
            heads.append(self_attention(
                self.qkv(x), ctx, self.n_sa, self.kv_sa, self.head_dim,
                cache_slot=self.sa_slot, dropout=self.dropout if self.training else 0.0,
            ))
        if self.n_ra:
            heads.append(self.relational(x, symbols, ctx))
        outputs, weights = zip(*heads)
        weights = torch.cat(weights, dim=1) if ctx.output_attentions else None
        if self.per_kind:
            return torch.cat([self.out(outputs[0]), self.out_ra(outputs[1])], dim=-1), weights
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return self.out(y), weights
