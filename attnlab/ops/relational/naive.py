"""Slow references of relational attention and of the symbolic-attention symbol retriever, written out from
the equations of the Dual Attention Transformer paper (Altabaa & Lafferty 2024, arXiv 2405.16727; the
authors' ``dual-attention`` package); the tests compare the fast forms with them. Nothing in attnlab imports
this module.

Relational attention, receiver i, head h (query heads H, key heads H_kv, g = h // (H / H_kv)), head size D,
relations ℓ = 1..L of projection size p, relation activation f, symbols s_j:

    A_i^h  = Σ_{j≤i} α_ij^h (r_ij W_r^h + s_j W_s^g)
    α_ij^h = softmax_{j≤i}(⟨q_h(x_i), k_g(x_j)⟩ / √D)
    r_ij^ℓ = f(⟨φ_q^ℓ(x_i), φ_k^ℓ(x_j)⟩ / √p)          (φ_k = φ_q when the relations are symmetric)

with q, k the rows of one linear map ``qk`` (query heads first), φ_q, φ_k the rows of one linear map ``rel``
(φ_q first, φ_k absent when symmetric), W_s the linear map ``symbol`` and W_r^h the (L, D) slice h of
``w_r``. With RoPE, q_h(x_i) and k_g(x_j) are rotated to positions i and j. With position-relative symbols,
s_j is replaced by row min(i − j, relative_max) of a table.

Non-causal (an encoder's): the sums and the softmax run over every j, not j ≤ i, and a position-relative table
has 2·relative_max + 1 rows, row relative_max + clip(i − j, −relative_max, relative_max). With padding, the
senders are the real tokens only and positions count real tokens (a padded sequence is the unpadded one).

Symbolic attention (the symbol retriever), position j, symbol head h of size d_h, templates t_k, library ℓ_k:

    s_j^h = Σ_k softmax_k(⟨(W_q x_j)^h, t_k^h⟩ / √d_h) ℓ_k^h

Every vector and inner product is formed on its own, one batch row, head, receiver and sender at a time.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..attention.naive import naive_rope


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    return weight @ v + (bias if bias is not None else 0)


def naive_relational(
    x: torch.Tensor,
    symbols: torch.Tensor,
    *,
    qk_weight: torch.Tensor,
    qk_bias: torch.Tensor | None,
    rel_weight: torch.Tensor,
    rel_bias: torch.Tensor | None,
    symbol_weight: torch.Tensor,
    symbol_bias: torch.Tensor | None,
    w_r: torch.Tensor,
    symmetric: bool = False,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rope: bool = False,
    relative_max: int | None = None,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The heads A_i^h concatenated, (B, T, H·D), for x (B, T, d) and symbols (B, T, d) — or, with
    ``relative_max``, the table of position-relative symbols ((relative_max + 1, d) causal, (2·relative_max + 1,
    d) not).

    Weights as ``torch.nn.Linear`` stores them ((out, in); a bias may be None): ``qk`` maps x to
    [q_1..q_H ; k_1..k_{H_kv}], ``rel`` to [φ_q^1..φ_q^L ; φ_k^1..φ_k^L] (φ_q only when ``symmetric``),
    ``symbol`` (W_s) maps a symbol to H_kv value heads; ``w_r`` is (H, L, D). ``activation`` is f
    (None: identity); ``rope`` rotates queries and keys to their positions (theta 10000). ``causal=False``:
    every sender, not only j ≤ i. ``key_padding_mask`` (B, T), True for real tokens: padding sends nothing and
    its own rows stay zero.
    """
    B, T, _ = x.shape
    H, L, D = w_r.shape
    Hkv = symbol_weight.shape[0] // D
    P = rel_weight.shape[0] // ((1 if symmetric else 2) * L)
    f = activation or (lambda t: t)
    out = torch.zeros(B, T, H * D, dtype=x.dtype)
    for b in range(B):
        real = [True] * T if key_padding_mask is None else [bool(m) for m in key_padding_mask[b]]
        pos = [sum(real[:t]) for t in range(T)]  # positions count real tokens only
        qk = [_linear(qk_weight, qk_bias, x[b, t]) for t in range(T)]
        rel = [_linear(rel_weight, rel_bias, x[b, t]) for t in range(T)]
        phi_q = [r[: L * P] for r in rel]
        phi_k = phi_q if symmetric else [r[L * P :] for r in rel]
        for h in range(H):
            g = h // (H // Hkv)
            for i in range(T):
                if not real[i]:
                    continue
                senders = [j for j in range(T) if real[j] and (j <= i or not causal)]
                q = qk[i][h * D : (h + 1) * D]
                keys = [qk[j][H * D + g * D : H * D + (g + 1) * D] for j in senders]
                if rope:
                    q, keys = naive_rope(q, pos[i]), [naive_rope(k, pos[j]) for j, k in zip(senders, keys)]
                alpha = torch.stack([q @ k / math.sqrt(D) for k in keys]).softmax(0)
                for a, j in zip(alpha, senders):
                    r = torch.stack([
                        f(phi_q[i][l * P : (l + 1) * P] @ phi_k[j][l * P : (l + 1) * P] / math.sqrt(P))
                        for l in range(L)
                    ])
                    offset = pos[i] - pos[j]
                    if relative_max is None:
                        s = symbols[b, j]
                    elif causal:
                        s = symbols[min(offset, relative_max)]
                    else:
                        s = symbols[relative_max + max(-relative_max, min(offset, relative_max))]
                    s_proj = _linear(symbol_weight, symbol_bias, s)[g * D : (g + 1) * D]
                    out[b, i, h * D : (h + 1) * D] += a * (r @ w_r[h] + s_proj)
    return out


def naive_symbolic_attention(
    x: torch.Tensor,
    *,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor | None,
    templates: torch.Tensor,
    library: torch.Tensor,
    n_heads: int,
) -> torch.Tensor:
    """The symbols s_j (B, T, d) of x (B, T, d): per head, attention of W_q x_j + b_q over the (n_symbols, d)
    ``templates`` (keys), averaging the ``library`` (values); one position at a time."""
    B, T, d = x.shape
    dh = d // n_heads
    out = torch.zeros_like(x)
    for b in range(B):
        for j in range(T):
            q = _linear(q_weight, q_bias, x[b, j])
            for h in range(n_heads):
                cols = slice(h * dh, (h + 1) * dh)
                w = torch.stack([q[cols] @ t[cols] / math.sqrt(dh) for t in templates]).softmax(0)
                out[b, j, cols] = sum(w[k] * library[k, cols] for k in range(len(w)))
    return out
