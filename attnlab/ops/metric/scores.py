"""Metric attention as a dot product: softmax over −α_h · d(q_i, k_j) without an N×N×d tensor.

Every supported distance expands into a dot product plus terms that depend on the query or the key alone:

    l2         ‖q − k‖²             = ‖q‖² + ‖k‖² − 2 q·k
    maha_diag  Σ_c m_c (q_c − k_c)² = Σ m q² + Σ m k² − 2 (m⊙q)·k
    cosine     1 − q̂·k̂

A query-only term is constant along the softmax row and cancels, so the weights are

    softmax_j( q'_i · k'_j + b_j )   with   q' = 2α m⊙q (l2: m = 1),  b_j = −α Σ m k_j²;   cosine: q' = α q̂, k' = k̂

which is one attention call with the key bias ``b`` as a float mask. Ball pruning gives head h an origin o_h
and radius r_h in the metric's own coordinates φ(k) (k, √m⊙k or k̂); key j is dropped for head h when
u = r_h − ‖φ(k_j) − o_h‖ ≤ 0, and inside its weight is multiplied by the soft edge 1 − exp(−u / τ).
``naive.py`` beside this file is the pairwise loop these are tested against.

Shapes: q (batch, H, T, d), k (batch, Hkv, S, d); α (H,), m (H, d) or None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...layers.attention import repeat_kv

METRICS = ("l2", "cosine", "maha_diag")

# Smallest soft-edge argument: keeps log(1 − e^(−u/τ)) and its gradient finite for keys right on the boundary.
_MIN_EDGE = 1e-6


def coordinates(x: torch.Tensor, metric: str, maha: torch.Tensor | None = None) -> torch.Tensor:
    """φ(x): coordinates in which the metric is Euclidean, for x (B, H, T, d) with a per-head diagonal m."""
    if metric == "cosine":
        return F.normalize(x, dim=-1)
    if metric == "maha_diag":
        return x * maha.sqrt()[:, None].to(x.dtype)
    return x


def distance(a: torch.Tensor, b: torch.Tensor, metric: str, maha: torch.Tensor | None = None) -> torch.Tensor:
    """d(a, b) along the last axis without α: ‖·‖² for l2/maha_diag (in φ coordinates), 1 − cos for cosine."""
    ea, eb = coordinates(a, metric, maha), coordinates(b, metric, maha)
    if metric == "cosine":
        return 1 - (ea * eb).sum(-1)
    return (ea - eb).pow(2).sum(-1)


def dot_product_terms(
    q: torch.Tensor, k: torch.Tensor, alpha: torch.Tensor, metric: str, maha: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(q', k', key bias (B, H, 1, S) or None) such that −α d(q_i, k_j) = q'_i·k'_j + b_j + const(i)."""
    scale = alpha.to(q.dtype)[:, None, None]  # (H, 1, 1)
    if metric == "cosine":
        return scale * F.normalize(q, dim=-1), F.normalize(k, dim=-1), None
    if maha is None:
        k_sq = repeat_kv(_at_least_fp32(k).pow(2).sum(-1), q.shape[1])  # (B, H, S)
        q_scaled = 2 * scale * q
    else:
        k_sq = (repeat_kv(_at_least_fp32(k).pow(2), q.shape[1]) * maha[:, None]).sum(-1)
        q_scaled = 2 * scale * q * maha.to(q.dtype)[:, None]
    bias = -alpha[:, None] * k_sq  # fp32 (fp64 stays fp64): the one term that can be large
    return q_scaled, k, bias[:, :, None]


def ball_log_edge(coords: torch.Tensor, origin: torch.Tensor, radius: torch.Tensor, softness: float) -> torch.Tensor:
    """log of the soft ball edge per head and key, (B, H, 1, S): −inf outside, log(1 − e^(−u/τ)) inside.

    ``coords`` are the keys' φ coordinates per query head (B, H, S, d); origin (H, d), radius (H,).
    """
    u = radius.to(coords.dtype)[:, None] - (coords - origin.to(coords.dtype)[:, None]).norm(dim=-1)
    edge = torch.log(-torch.expm1(-u.clamp(min=_MIN_EDGE) / softness))
    return edge.masked_fill(~(u > 0), float("-inf"))[:, :, None]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32, fp32/fp64 unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
