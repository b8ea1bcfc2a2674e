"""The two fast forms of relational attention (Altabaa & Lafferty 2024, arXiv 2405.16727); same numbers.

For receiver i and head h, with symbols s_j:

    A_i^h = Σ_j α_ij^h (r_ij W_r^h + s_j W_s^h),   r_ij^ℓ = f(⟨φ_q^ℓ(x_i), φ_k^ℓ(x_j)⟩ / √d_proj)

- ``fused`` (identity f only). Σ_j α_ij r_ij^ℓ = ⟨φ_q^ℓ(x_i), Σ_j α_ij φ_k^ℓ(x_j)⟩ / √d_proj, so one attention
  call whose values are [s_j W_s ; φ_k(x_j)] yields both sums, and a per-position contraction with φ_q(x_i)
  finishes the relations. Memory O(N) (flash / memory-efficient kernels), compute ∝ N² · n_heads ·
  (d_head + n_relations·d_proj).
- ``direct``. Materialise α. With identity f the relations are still never materialised (α @ φ_k, then
  the contraction), and α is computed by blocks of queries; in a causal layer each block meets only the keys
  up to its last query: the q·k products need only d_head (the fused call pads them to the value width on the
  CPU) and about half of the causal N² is skipped. Any other f materialises r as (batch, n_relations, N, N),
  as the authors' implementation does. Position-relative symbols always take this path, whole: Σ_j α_ij
  s_{i-j} needs α explicitly (it is summed along diagonals into (batch, heads, N, table rows)).
  Memory O(N²·(heads [+ n_relations])) for the backward.

Both forms read ``ctx.causal``: a causal layer (a decoder) masks the keys ahead of each query, a non-causal
one (an encoder) only the padding in ``ctx.attn_mask``, and its relative symbols see offsets of both signs.

Shapes: q (batch, H, seq, D), k (batch, Hkv, kv_len, D), symbol values s W_s (batch, kv_len, Hkv·D) — or the
table of relative symbols, (max_rel_pos + 1, Hkv·D) in a causal layer, (2·max_rel_pos + 1, Hkv·D) in a
non-causal one — φ_q (batch, seq, L·P), φ_k (batch, kv_len, L·P), W_r
(H, L, D). ``naive.py`` beside this file is the loop these forms are tested against.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from ...layers.attention import attend, softmax_weights
from ...layers.context import MixerContext

RELATION_ACTIVATIONS = {
    "identity": None,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}
DIRECT_BLOCK_ROWS = 256  # queries per block of the direct form


def contract(q_rel: torch.Tensor, attended_keys: torch.Tensor, n_relations: int) -> torch.Tensor:
    """(⟨φ_q^ℓ(x_i), Σ_j α_ij φ_k^ℓ(x_j)⟩ / √d_proj)_ℓ → (batch, heads, seq, n_relations)."""
    batch, seq = q_rel.shape[:2]
    proj = q_rel.shape[-1] // n_relations
    q_rel = q_rel.view(batch, 1, seq, n_relations, proj)
    attended_keys = attended_keys.unflatten(-1, (n_relations, proj))
    return (q_rel * attended_keys).sum(-1) / math.sqrt(proj)


def fused(
    q: torch.Tensor,
    k: torch.Tensor,
    sym: torch.Tensor,
    q_rel: torch.Tensor,
    k_rel: torch.Tensor,
    w_r: torch.Tensor,
    ctx: MixerContext,
    dropout: float = 0.0,
) -> torch.Tensor:
    """One attention call over values [s_j W_s ; φ_k^rel(x_j)], then the per-position relation contraction."""
    batch, kv_len = sym.shape[:2]
    n_kv_heads, head_dim = k.shape[1], q.shape[-1]
    sym = sym.view(batch, kv_len, n_kv_heads, head_dim).transpose(1, 2)
    values = torch.cat([sym, _per_kv_head(k_rel, n_kv_heads, sym.dtype)], dim=-1)
    out, _ = attend(q, k, values, ctx, scale=head_dim**-0.5, dropout=dropout)
    y, attended_keys = out.split([head_dim, k_rel.shape[-1]], dim=-1)
    return y + contract(q_rel, attended_keys, w_r.shape[1]) @ w_r


def direct(
    q: torch.Tensor,
    k: torch.Tensor,
    sym: torch.Tensor,
    q_rel: torch.Tensor,
    k_rel: torch.Tensor,
    w_r: torch.Tensor,
    ctx: MixerContext,
    *,
    activation: str = "identity",
    relative_symbols: bool = False,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """α materialised; relations materialised only for a non-identity activation. Returns (heads, α or None).

    With the identity activation and absolute symbols, one matmul α @ [s W_s ; φ_k^rel] gives both sums,
    by blocks of ``DIRECT_BLOCK_ROWS`` queries: only one block's α lives at a time in the forward, and in a
    causal layer block b meets only the keys up to its last query, so about half of the N² is skipped.
    Position-relative symbols, other activations and ``output_attentions`` need the whole α at once.
    """
    batch, H, seq, D = q.shape
    Hkv, n_relations = k.shape[1], w_r.shape[1]
    if activation == "identity" and not relative_symbols and not ctx.output_attentions:
        values = torch.cat([sym.view(batch, -1, Hkv, D).transpose(1, 2), _per_kv_head(k_rel, Hkv, q.dtype)], dim=-1)
        blocks = []
        for start in range(0, seq, DIRECT_BLOCK_ROWS):
            rows = slice(start, min(start + DIRECT_BLOCK_ROWS, seq))
            summed = _attend_rows(q, k, values, ctx, rows, dropout)[0]  # each block finished on its own:
            y, attended_keys = summed[..., :D], summed[..., D:]  # no N-long copy of the wide sums
            blocks.append(y + contract(q_rel[:, rows], attended_keys, n_relations) @ w_r)
        return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)), None
    kv_len = k.shape[-2]
    values = sym.view(batch, kv_len, Hkv, D).transpose(1, 2) if not relative_symbols else None
    if activation == "identity":
        keys = _per_kv_head(k_rel, Hkv, q.dtype)
        values = keys if values is None else torch.cat([values, keys], -1)
    summed, alpha, weights = _attend_rows(q, k, values, ctx, slice(0, seq), dropout)
    if relative_symbols:  # Σ_j α_ij s_{i-j} = Σ_d (Σ_{j: i-j=d} α_ij) s_d
        rows = relative_table_rows(ctx, kv_len, sym.shape[0])
        by_distance = alpha.new_zeros(batch, H, seq, sym.shape[0])
        by_distance.scatter_add_(-1, rows[:, None].expand_as(alpha), alpha)
        table = sym.view(-1, Hkv, D).repeat_interleave(H // Hkv, dim=1).transpose(0, 1)
        y = by_distance @ table
    else:
        y, summed = summed[..., :D], summed[..., D:]
    if activation == "identity":
        relations = contract(q_rel, summed, n_relations)
    else:  # r_ij^ℓ = f(⟨φ_q^ℓ(x_i), φ_k^ℓ(x_j)⟩ / √d_proj), (batch, n_relations, seq, kv_len)
        proj = q_rel.shape[-1] // n_relations
        q_l = q_rel.view(batch, seq, n_relations, proj).transpose(1, 2)
        k_l = k_rel.view(batch, kv_len, n_relations, proj).transpose(1, 2)
        r = RELATION_ACTIVATIONS[activation]((q_l @ k_l.transpose(-2, -1)) / math.sqrt(proj))
        relations = torch.einsum("bhij,blij->bhil", alpha, r.to(alpha.dtype))
    return y + relations @ w_r, weights


def relative_table_rows(ctx: MixerContext, kv_len: int, table_rows: int) -> torch.Tensor:
    """(batch|1, q_len, kv_len) long: the row of the relative-symbol table each pair (i, j) reads.

    Causal layer, table of M + 1 rows: min(pos_i - pos_j, M), 0 where j is ahead of i (masked anyway).
    Non-causal layer, table of 2M + 1 rows: M + clip(pos_i - pos_j, -M, M), so row M + d is offset d and the
    causal table is the upper half. Positions count real tokens only, so a padded row sees the same offsets
    as the unpadded sequence.
    """
    q_pos = ctx.position_ids
    if ctx.key_padding_mask is None:
        k_pos = torch.arange(kv_len, device=q_pos.device)[None]
    else:
        k_pos = (ctx.key_padding_mask.long().cumsum(-1) - 1).clamp(min=0)
    offsets = q_pos[:, :, None] - k_pos[:, None, :]
    if ctx.causal:
        return offsets.clamp(0, table_rows - 1)
    max_rel = (table_rows - 1) // 2
    return offsets.clamp(-max_rel, max_rel) + max_rel


def _per_kv_head(k_rel: torch.Tensor, n_kv_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Relation keys (batch, kv_len, R) as values of every key/value head, (batch, kv_heads, kv_len, R)."""
    return k_rel[:, None].to(dtype).expand(k_rel.shape[0], n_kv_heads, *k_rel.shape[1:])


def _attend_rows(
    q: torch.Tensor, k: torch.Tensor, values: torch.Tensor | None, ctx: MixerContext, rows: slice, dropout: float
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """α @ values for the queries ``rows``: over the keys up to the last of them in a causal layer (the rest
    is masked), over all keys in a non-causal one.

    Query heads that share a key/value head are stacked along rows, (batch, kv_heads, groups·rows, ·), so
    keys and values are never repeated per head. Returns (α @ values or None, α after dropout, α).
    """
    batch, H, seq, D = q.shape
    Hkv, n_rows = k.shape[1], rows.stop - rows.start
    # causal: past keys + current ones up to the block's end; non-causal: every key
    keys_end = k.shape[-2] - (seq - rows.stop) if ctx.causal else k.shape[-2]
    grouped = (batch, Hkv, H // Hkv * n_rows)
    scores = (q[:, :, rows] * D**-0.5).reshape(*grouped, D) @ k[:, :, :keys_end].transpose(-2, -1)
    mask = ctx.attn_mask
    if mask is not None:  # a padding-only mask (batch, 1, 1, kv_len) broadcasts over the queries
        mask = (mask if mask.shape[-2] == 1 else mask[..., rows, :])[..., :keys_end]
    weights = softmax_weights(scores.view(batch, H, n_rows, keys_end), mask, causal=ctx.causal, inplace=True)
    alpha = F.dropout(weights, dropout)
    if values is None:
        return None, alpha, weights
    summed = alpha.reshape(*grouped, keys_end) @ values[:, :, :keys_end]
    return summed.view(batch, H, n_rows, -1), alpha, weights
