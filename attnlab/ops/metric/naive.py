"""Slow reference of causal metric attention (MoA, after the MoA-100M model card), written out from its
definition one (batch, head, query, key) at a time; the tests compare the fast forms with it. Nothing in
attnlab imports this module.

Query head h (key/value head g = h // (H / H_kv)) at position i weighs key j ≤ i by

    w_ij = exp(−α_h d(q_i, k_j)) · e_ij,        y_i = Σ_{j≤i} w_ij v_j / Σ_{j≤i} w_ij

with the distance

    l2         d = Σ_c (q_c − k_c)²
    maha_diag  d = Σ_c m_hc (q_c − k_c)²
    cosine     d = 1 − q·k / (‖q‖ ‖k‖)

and, with ball pruning, the soft edge e_ij = 1 − exp(−u / τ) where u = r_h − ‖φ(k_j) − o_h‖ > 0 and 0
elsewhere, in the metric's coordinates φ(k) = k, √m_h ⊙ k or k / ‖k‖; a query always keeps its own key
(e_ii = 1). Without balls e_ij = 1.
"""

from __future__ import annotations

import torch


def naive_metric_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    alpha: torch.Tensor,
    metric: str,
    maha: torch.Tensor | None = None,
    origin: torch.Tensor | None = None,
    radius: torch.Tensor | None = None,
    ball_softness: float = 1.0,
) -> torch.Tensor:
    """y (B, H, T, D) for q (B, H, T, D) and k, v (B, H_kv, T, D); α (H,), the Mahalanobis diagonal ``maha``
    (H, D) for maha_diag, ball ``origin`` (H, D) and ``radius`` (H,) when pruning (None: no balls)."""
    B, H, T, D = q.shape
    G = k.shape[1]
    m = maha if maha is not None else torch.ones(H, D, dtype=q.dtype)
    y = torch.zeros(B, H, T, D, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for i in range(T):
                weights = []
                for j in range(i + 1):
                    qi, kj = q[b, h, i], k[b, g, j]
                    if metric == "cosine":
                        d = 1 - (qi @ kj) / (qi.norm() * kj.norm())
                        point = kj / kj.norm()
                    else:
                        d = sum(m[h, c] * (qi[c] - kj[c]) ** 2 for c in range(D))
                        point = kj * m[h].sqrt()
                    w = torch.exp(-alpha[h] * d)
                    if radius is not None and j != i:
                        u = radius[h] - (point - origin[h]).norm()
                        w = w * (1 - torch.exp(-u / ball_softness)) if u > 0 else w * 0
                    weights.append(w)
                weights = torch.stack(weights) / sum(weights)
                y[b, h, i] = sum(weights[j] * v[b, g, j] for j in range(i + 1))
    return y
