"""Causal multi-head relational attention (Altabaa & Lafferty 2024, arXiv 2405.16727).

For receiver i and head h, with symbols s_j from a symbol retriever:

    A_i^h = Σ_j α_ij^h (r_ij W_r^h + s_j W_s^h)
    α_i^h = softmax_j(⟨q_h(x_i), k_h(x_j)⟩ / √d_head)                   (φ_attn, causal, GQA-able)
    r_ij  = (f(⟨φ_q^ℓ(x_i), φ_k^ℓ(x_j)⟩ / √d_proj))_{ℓ=1..n_relations}  (φ_rel; φ_k = φ_q if symmetric)

The relations are shared by all heads (each head has its own W_r^h); the module returns the heads
concatenated, (batch, seq, n_heads · d_head), and the caller applies the output projection.

Two ways to compute it, same numbers:

- ``fused`` (identity f only). Σ_j α_ij r_ij^ℓ = ⟨φ_q^ℓ(x_i), Σ_j α_ij φ_k^ℓ(x_j)⟩ / √d_proj, so one
  ``scaled_dot_product_attention`` call whose values are [s_j W_s ; φ_k(x_j)] yields both sums, and a
  per-position contraction with φ_q(x_i) finishes the relations. Memory O(N) (flash / memory-efficient
  kernels), compute ∝ N² · n_heads · (d_head + n_relations·d_proj).
- ``direct``. Materialise α. With identity f the relations are still never materialised (α @ φ_k, then
  the contraction), and α is computed by blocks of queries, each against the keys up to its last query:
  the q·k products need only d_head (the fused call pads them to the value width on the CPU) and about half
  of the causal N² is skipped. Any other f materialises r as (batch, n_relations, N, N), as the authors'
  implementation does. Position-relative symbols always take this path, whole: Σ_j α_ij s_{i-j} needs α
  explicitly (it is summed along diagonals into (batch, heads, N, max_rel_pos + 1)).
  Memory O(N²·(heads [+ n_relations])) for the backward.

Standard attention costs N²·n_heads·2·d_head multiply-adds and O(N) memory with SDPA; a relational head
adds n_relations·d_proj to the value width in the fused form, i.e. (1 + n_relations·d_proj / d_head)× the
attention-times-values work of a standard head.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .context import MixerContext
from .rotary import apply_rotary
from .symbols import relative_distances

RELATION_ACTIVATIONS = {
    "identity": None,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}
RELATION_FORMS = ("auto", "fused", "direct")
FUSED_FROM_KEYS = {"cpu": 4096, "cuda": 256}  # where rel_form="auto" switches to the fused form
DIRECT_BLOCK_ROWS = 256  # queries per block of the direct form


def causal_softmax(
    scores: torch.Tensor, ctx: MixerContext, inplace: bool = False, rows: slice | None = None
) -> torch.Tensor:
    """softmax over keys of (batch, heads, q_len, kv_len) scores under the context's causal/padding mask.

    ``rows``: the scores are those of the current queries ``rows`` against the first kv_len keys (a block
    of queries that ends at ``rows.stop``). ``inplace`` masks ``scores`` itself (a fresh matmul output
    nobody else needs): one N² buffer less.
    """
    mask = ctx.attn_mask
    if mask is not None and rows is not None:
        mask = mask[..., rows, : scores.shape[-1]]
    q_len, kv_len = scores.shape[-2:]
    if mask is None and inplace and kv_len >= q_len:  # only the last q_len keys can be ahead of a query
        ahead = torch.ones(q_len, q_len, dtype=torch.bool, device=scores.device).triu(1)
        scores[..., kv_len - q_len :].masked_fill_(ahead, float("-inf"))
        return scores.softmax(dim=-1)
    if mask is None:
        q_index = torch.arange(q_len, device=scores.device)[:, None] + (kv_len - q_len)
        mask = torch.arange(kv_len, device=scores.device)[None, :] <= q_index
    fill = scores.masked_fill_ if inplace else scores.masked_fill
    return fill(~mask, float("-inf")).softmax(dim=-1)


class RelationalAttention(nn.Module):
    """Relational heads: q/k for α (n_heads / n_kv_heads), relation maps, W_s for symbols, W_r per head.

    ``cache_slot`` is the index this module uses in a transformers ``Cache``: keys = φ_attn keys, values =
    [s_j W_s (all kv heads, flattened) ; φ_k^rel(x_j)] packed along features, so past symbols and relation
    keys are stored once per position (relation keys are not repeated per head).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        n_kv_heads: int,
        n_relations: int,
        rel_proj_dim: int,
        *,
        cache_slot: int,
        symmetric: bool = False,
        activation: str = "identity",
        form: str = "auto",
        relative_symbols: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if activation not in RELATION_ACTIVATIONS:
            raise ValueError(f"relation activation must be one of {tuple(RELATION_ACTIVATIONS)}, got {activation!r}")
        if form not in RELATION_FORMS:
            raise ValueError(f"relational form must be one of {RELATION_FORMS}, got {form!r}")
        if form == "fused" and (activation != "identity" or relative_symbols):
            raise ValueError("the fused relational form needs the identity relation activation and absolute symbols")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.n_relations, self.rel_proj_dim = n_relations, rel_proj_dim
        self.symmetric, self.activation, self.relative_symbols = symmetric, activation, relative_symbols
        self.form = form
        self.cache_slot = cache_slot
        self.dropout = dropout
        self.qk = nn.Linear(d_model, (n_heads + n_kv_heads) * head_dim, bias=bias)
        self.rel = nn.Linear(d_model, (1 if symmetric else 2) * n_relations * rel_proj_dim, bias=bias)
        self.symbol_values = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)  # W_s
        self.w_r = nn.Parameter(torch.empty(n_heads, n_relations, head_dim))  # W_r^h

    def uses_fused_form(self, q_len: int, kv_len: int, need_weights: bool, device_type: str = "cpu") -> bool:
        """``auto``: direct (fewer FLOPs: q·k at d_head, half the causal N² skipped) below ``FUSED_FROM_KEYS``
        keys, fused (O(N) memory) from there. On a 2-core CPU (d_model 256, 4 layers, 4 RA heads, batch 4) the
        direct form's training step is 12–17 % faster at 2048 tokens and 10 % at 4096 (batch 1), for about
        150 MB more per layer and sequence at 4096; ``rel_form="fused"`` trades that speed for memory. On GPU
        the fused call runs a memory-efficient kernel."""
        if self.activation != "identity" or self.relative_symbols or need_weights or self.form == "direct":
            return False
        return self.form == "fused" or kv_len >= FUSED_FROM_KEYS.get(device_type, FUSED_FROM_KEYS["cuda"])

    def forward(
        self, x: torch.Tensor, symbols: torch.Tensor, ctx: MixerContext
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (batch, seq, d_model); symbols (batch, seq, d_model), or the (max_rel + 1, d_model) table of
        relative symbols. Returns the heads (batch, seq, n_heads·head_dim) and α if ``output_attentions``."""
        batch, seq, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k = self.qk(x).split([H * D, Hkv * D], dim=-1)
        q = q.view(batch, seq, H, D).transpose(1, 2)
        k = k.view(batch, seq, Hkv, D).transpose(1, 2)
        if ctx.rope is not None:
            q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        q_rel, k_rel = self._relation_maps(x)
        sym = self.symbol_values(symbols)
        if ctx.cache is not None:
            packed = k_rel if self.relative_symbols else torch.cat([sym, k_rel], dim=-1)
            k, packed = ctx.cache.update(k, packed[:, None], self.cache_slot)
            packed = packed[:, 0]
            k_rel = packed[..., -k_rel.shape[-1]:]
            if not self.relative_symbols:
                sym = packed[..., : Hkv * D]
        kv_len = k.shape[-2]
        if self.uses_fused_form(seq, kv_len, ctx.output_attentions, x.device.type):
            y, weights = self._fused(q, k, sym, q_rel, k_rel, ctx), None
        else:
            y, weights = self._direct(q, k, sym, q_rel, k_rel, ctx)
        return y.transpose(1, 2).reshape(batch, seq, H * D), weights

    def _relation_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """φ_q^rel(x), φ_k^rel(x), each (batch, seq, n_relations·rel_proj_dim); one map when symmetric."""
        maps = self.rel(x)
        return (maps, maps) if self.symmetric else maps.chunk(2, dim=-1)

    def _contract(self, q_rel: torch.Tensor, attended_keys: torch.Tensor) -> torch.Tensor:
        """(⟨φ_q^ℓ(x_i), Σ_j α_ij φ_k^ℓ(x_j)⟩ / √d_proj)_ℓ → (batch, heads, seq, n_relations)."""
        batch, seq = q_rel.shape[:2]
        q_rel = q_rel.view(batch, 1, seq, self.n_relations, self.rel_proj_dim)
        attended_keys = attended_keys.unflatten(-1, (self.n_relations, self.rel_proj_dim))
        return (q_rel * attended_keys).sum(-1) / math.sqrt(self.rel_proj_dim)

    def _fused(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        sym: torch.Tensor,
        q_rel: torch.Tensor,
        k_rel: torch.Tensor,
        ctx: MixerContext,
    ) -> torch.Tensor:
        """One SDPA call over values [s_j W_s ; φ_k^rel(x_j)], then the per-position relation contraction."""
        batch, kv_len = sym.shape[:2]
        sym = sym.view(batch, kv_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        k_rel = k_rel[:, None].expand(batch, self.n_kv_heads, kv_len, k_rel.shape[-1])
        values = torch.cat([sym, k_rel.to(sym.dtype)], dim=-1)
        if q.device.type == "cpu":
            # PyTorch's CPU flash kernel needs one head width for q, k and v (else SDPA falls back to the math
            # path and materialises N×N): zero-padding q and k leaves q·k unchanged (scale given explicitly)
            q, k = (F.pad(t, (0, values.shape[-1] - self.head_dim)) for t in (q, k))
        out = F.scaled_dot_product_attention(
            q,
            k,
            values,
            attn_mask=ctx.attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=ctx.attn_mask is None and ctx.past_length == 0 and q.shape[-2] > 1,
            scale=self.head_dim**-0.5,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        y, attended_keys = out.split([self.head_dim, k_rel.shape[-1]], dim=-1)
        return y + self._contract(q_rel, attended_keys) @ self.w_r

    def _direct(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        sym: torch.Tensor,
        q_rel: torch.Tensor,
        k_rel: torch.Tensor,
        ctx: MixerContext,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """α materialised; relations materialised only for a non-identity activation.

        With the identity activation and absolute symbols, one matmul α @ [s W_s ; φ_k^rel] gives both sums,
        by blocks of ``DIRECT_BLOCK_ROWS`` queries: block b meets only the keys up to its last query, so
        about half of the causal N² is skipped and only one block's α lives at a time in the forward.
        Position-relative symbols, other activations and ``output_attentions`` need the whole α at once.
        """
        batch, seq = q.shape[0], q.shape[-2]
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        by_blocks = self.activation == "identity" and not self.relative_symbols and not ctx.output_attentions
        if by_blocks:
            values = torch.cat([sym.view(batch, -1, Hkv, D).transpose(1, 2), self._shared(k_rel, q.dtype)], dim=-1)
            blocks = []
            for start in range(0, seq, DIRECT_BLOCK_ROWS):
                rows = slice(start, min(start + DIRECT_BLOCK_ROWS, seq))
                summed = self._attend_rows(q, k, values, ctx, rows)[0]  # each block finished on its own:
                y, attended_keys = summed[..., :D], summed[..., D:]  # no N-long copy of the wide sums
                blocks.append(y + self._contract(q_rel[:, rows], attended_keys) @ self.w_r)
            return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)), None
        kv_len = k.shape[-2]
        values = sym.view(batch, kv_len, Hkv, D).transpose(1, 2) if not self.relative_symbols else None
        if self.activation == "identity":
            values = self._shared(k_rel, q.dtype) if values is None else torch.cat([values, self._shared(k_rel, q.dtype)], -1)
        summed, alpha, weights = self._attend_rows(q, k, values, ctx, slice(0, seq))
        if self.relative_symbols:  # Σ_j α_ij s_{i-j} = Σ_d (Σ_{j: i-j=d} α_ij) s_d
            distances = relative_distances(ctx, kv_len, sym.shape[0] - 1)
            by_distance = alpha.new_zeros(batch, H, seq, sym.shape[0])
            by_distance.scatter_add_(-1, distances[:, None].expand_as(alpha), alpha)
            table = sym.view(-1, Hkv, D).repeat_interleave(H // Hkv, dim=1).transpose(0, 1)
            y = by_distance @ table
        else:
            y, summed = summed[..., :D], summed[..., D:]
        if self.activation == "identity":
            relations = self._contract(q_rel, summed)
        else:  # r_ij^ℓ = f(⟨φ_q^ℓ(x_i), φ_k^ℓ(x_j)⟩ / √d_proj), (batch, n_relations, seq, kv_len)
            q_l = q_rel.view(batch, seq, self.n_relations, self.rel_proj_dim).transpose(1, 2)
            k_l = k_rel.view(batch, kv_len, self.n_relations, self.rel_proj_dim).transpose(1, 2)
            r = RELATION_ACTIVATIONS[self.activation]((q_l @ k_l.transpose(-2, -1)) / math.sqrt(self.rel_proj_dim))
            relations = torch.einsum("bhij,blij->bhil", alpha, r.to(alpha.dtype))
        return y + relations @ self.w_r, weights

    def _shared(self, k_rel: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Relation keys (batch, kv_len, R) as values of every key/value head, (batch, kv_heads, kv_len, R)."""
        return k_rel[:, None].to(dtype).expand(k_rel.shape[0], self.n_kv_heads, *k_rel.shape[1:])

    def _attend_rows(
        self, q: torch.Tensor, k: torch.Tensor, values: torch.Tensor | None, ctx: MixerContext, rows: slice
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """α @ values for the queries ``rows``, over the keys up to the last of them (the rest is masked).

        Query heads that share a key/value head are stacked along rows, (batch, kv_heads, groups·rows, ·), so
        keys and values are never repeated per head. Returns (α @ values or None, α after dropout, α).
        """
        batch, n_rows = q.shape[0], rows.stop - rows.start
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        keys_end = k.shape[-2] - (q.shape[-2] - rows.stop)  # past keys + current ones up to the block's end
        grouped = (batch, Hkv, H // Hkv * n_rows)
        scores = (q[:, :, rows] * D**-0.5).reshape(*grouped, D) @ k[:, :, :keys_end].transpose(-2, -1)
        weights = causal_softmax(scores.view(batch, H, n_rows, keys_end), ctx, inplace=True, rows=rows)
        alpha = F.dropout(weights, self.dropout, self.training)
        if values is None:
            return None, alpha, weights
        summed = alpha.reshape(*grouped, keys_end) @ values[:, :, :keys_end]
        return summed.view(batch, H, n_rows, -1), alpha, weights
