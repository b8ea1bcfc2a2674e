"""Multi-head relational attention (Altabaa & Lafferty 2024, arXiv 2405.16727), causal or not: the module.

For receiver i and head h, with symbols s_j from a symbol retriever:

    A_i^h = Σ_j α_ij^h (r_ij W_r^h + s_j W_s^h)
    α_i^h = softmax_j(⟨q_h(x_i), k_h(x_j)⟩ / √d_head)                   (φ_attn, causal or not, GQA-able)
    r_ij  = (f(⟨φ_q^ℓ(x_i), φ_k^ℓ(x_j)⟩ / √d_proj))_{ℓ=1..n_relations}  (φ_rel; φ_k = φ_q if symmetric)

The relations are shared by all heads (each head has its own W_r^h); the module returns the heads
concatenated, (batch, seq, n_heads · d_head), and the caller applies the output projection. The two ways to
compute it (``fused``, ``direct``) and their loop reference live in ``attnlab/ops/relational/``.

Standard attention costs N²·n_heads·2·d_head multiply-adds and O(N) memory with SDPA; a relational head
adds n_relations·d_proj to the value width in the fused form, i.e. (1 + n_relations·d_proj / d_head)× the
attention-times-values work of a standard head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.relational.forms import RELATION_ACTIVATIONS, direct, fused
from .context import MixerContext
from .rotary import apply_rotary

RELATION_FORMS = ("auto", "fused", "direct")
FUSED_FROM_KEYS = {"cpu": 4096, "cuda": 256}  # where rel_form="auto" switches to the fused form


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
        """x (batch, seq, d_model); symbols (batch, seq, d_model), or the table of relative symbols ((max_rel + 1,
        d_model) in a causal layer, (2·max_rel + 1, d_model) in a non-causal one: ``ctx.causal``). Returns the heads
        (batch, seq, n_heads·head_dim) and α if ``output_attentions``."""
        batch, seq, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k = self.qk(x).split([H * D, Hkv * D], dim=-1)
        q = q.view(batch, seq, H, D).transpose(1, 2)
        k = k.view(batch, seq, Hkv, D).transpose(1, 2)
        if ctx.rope is not None:
            q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        q_rel, k_rel = self.relation_maps(x)
        sym = self.symbol_values(symbols)
        if ctx.cache is not None:
            packed = k_rel if self.relative_symbols else torch.cat([sym, k_rel], dim=-1)
            k, packed = ctx.cache.update(k, packed[:, None], self.cache_slot)
            packed = packed[:, 0]
            k_rel = packed[..., -k_rel.shape[-1]:]
            if not self.relative_symbols:
                sym = packed[..., : Hkv * D]
        dropout = self.dropout if self.training else 0.0
        if self.uses_fused_form(seq, k.shape[-2], ctx.output_attentions, x.device.type):
            y, weights = fused(q, k, sym, q_rel, k_rel, self.w_r, ctx, dropout), None
        else:
            y, weights = direct(q, k, sym, q_rel, k_rel, self.w_r, ctx, activation=self.activation,
                                      relative_symbols=self.relative_symbols, dropout=dropout)
        return y.transpose(1, 2).reshape(batch, seq, H * D), weights

    def relations(self, x: torch.Tensor) -> torch.Tensor:
        """r(x_i, x_j) for every pair, (batch, n_relations, seq, seq), future pairs included: what the heads
        weight by α. Materialised only for analysis; the forward never needs it for the identity activation."""
        batch, seq, _ = x.shape
        q_rel, k_rel = self.relation_maps(x)
        q_l = q_rel.view(batch, seq, self.n_relations, self.rel_proj_dim).transpose(1, 2)
        k_l = k_rel.view(batch, seq, self.n_relations, self.rel_proj_dim).transpose(1, 2)
        r = q_l @ k_l.transpose(-2, -1) / self.rel_proj_dim**0.5
        activation = RELATION_ACTIVATIONS[self.activation]
        return r if activation is None else activation(r)

    def relation_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """φ_q^rel(x), φ_k^rel(x), each (batch, seq, n_relations·rel_proj_dim); one map when symmetric."""
        maps = self.rel(x)
        return (maps, maps) if self.symmetric else maps.chunk(2, dim=-1)
