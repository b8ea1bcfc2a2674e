"""Symbol retrievers of the Dual Attention Transformer (Altabaa & Lafferty 2024, arXiv 2405.16727).

A relational head tags the message from object j with j's *symbol* s_j, a vector that points at the object
without carrying its features. The paper identifies objects three ways, one module each:

- ``PositionalSymbols``: by absolute position, s_j = S[pos_j] (a learned library, one row per position);
- ``RelativeSymbols``: by position relative to the receiver, s_ij = S[clip(pos_i - pos_j)];
- ``SymbolicAttention``: by an equivalence class over features, s_j = MHA(x_j W_q, templates, library).

Absolute retrievers return (batch, seq, d_model); the relative one returns its table. A causal receiver never
looks ahead, so a causal table has max_rel_pos + 1 rows, row d for the offset pos_i - pos_j = d >= 0; an
encoder's receivers see offsets of both signs, so a ``bidirectional`` table has 2·max_rel_pos + 1 rows, row
max_rel_pos + d for the offset d, and gives a causal layer (a decoder sharing the retriever) its upper half.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import attend
from .context import MixerContext

SYMBOL_RETRIEVERS = ("symbolic_attention", "positional", "position_relative")


class PositionalSymbols(nn.Module):
    """s_j = S[pos_j]: a learned library indexed by the (padding-aware) absolute position."""

    relative = False

    def __init__(self, d_model: int, max_length: int):
        super().__init__()
        self.library = nn.Embedding(max_length, d_model)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        if int(ctx.position_ids.max()) >= self.library.num_embeddings:
            raise ValueError(
                f"positional symbols cover {self.library.num_embeddings} positions; got position "
                f"{int(ctx.position_ids.max())} (use symbol_retrieval='position_relative' or 'symbolic_attention')"
            )
        return self.library(ctx.position_ids)


class RelativeSymbols(nn.Module):
    """s_ij = S[clip(pos_i - pos_j)]: the table itself; the relational heads index it by offset.

    ``bidirectional``: offsets -max_rel_pos..max_rel_pos (an encoder), else 0..max_rel_pos (a causal model).
    """

    relative = True

    def __init__(self, d_model: int, max_rel_pos: int, *, bidirectional: bool = False):
        super().__init__()
        self.max_rel_pos, self.bidirectional = max_rel_pos, bidirectional
        self.table = nn.Parameter(torch.empty((2 if bidirectional else 1) * max_rel_pos + 1, d_model))

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        """The rows a layer of this causality reads: all of them, or a causal layer's half of a bidirectional table."""
        if not self.bidirectional:
            if not ctx.causal:
                raise ValueError("a causal table of relative symbols has no rows for keys ahead of the receiver; "
                                 "build RelativeSymbols(..., bidirectional=True) for a non-causal layer")
            return self.table
        return self.table[self.max_rel_pos :] if ctx.causal else self.table


class SymbolicAttention(nn.Module):
    """s_j = Σ_k softmax_k(⟨q(x_j), t_k⟩ / √d_h) S_k per head: attention of each object over a learned library.

    The library holds ``n_symbols`` template features (keys) and symbols (values); each object retrieves
    its symbol on its own, so all batch × seq objects are queries of one attention call.
    """

    relative = False

    def __init__(self, d_model: int, n_heads: int, n_symbols: int, *, trainable: bool = True, bias: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.templates = nn.Parameter(torch.empty(n_symbols, d_model))
        self.library = nn.Parameter(torch.empty(n_symbols, d_model), requires_grad=trainable)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        q = self.q_proj(x)
        k, v = self.templates.to(q.dtype), self.library.to(q.dtype)
        symbols, _ = attend(self._heads(q), self._heads(k), self._heads(v), causal=False)
        return symbols.transpose(1, 2).reshape(x.shape)

    def retrieval_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Each object's attention over the library, (symbol heads, batch·seq, n_symbols); rows sum to 1."""
        q = self._heads(self.q_proj(x))[0]
        templates = self._heads(self.templates.to(q.dtype))[0]
        return (q @ templates.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(..., d_model) → (1, heads, rows, d_head): every object is one query row of a single call."""
        return t.reshape(1, -1, self.n_heads, t.shape[-1] // self.n_heads).transpose(1, 2)

