"""Slow references of causal softmax attention and of rotary position embeddings (RoPE), written out from
their definitions; the tests compare the fast forms with them. Nothing in attnlab imports this module.

* ``naive_rope``: RoPE (Su et al. 2021) in the half-split layout. With d the vector size, pair k of a
  vector at position p is (x_k, x_{k+d/2}), turned by the angle a = p · theta^(-2k/d):

      x'_k       = x_k cos a − x_{k+d/2} sin a
      x'_{k+d/2} = x_k sin a + x_{k+d/2} cos a

  one element at a time, with the angle in Python floats (fp64).
* ``naive_attention``: causal multi-head attention with grouped key/value heads,

      y_i^h = Σ_{j≤i} softmax_j(q_i^h · k_j^g / √D) v_j^g,    g = h // (H / H_kv)

  a double loop over queries and keys for every batch row and head.
"""

from __future__ import annotations

import itertools
import math

import torch


def naive_rope(x: torch.Tensor, positions, theta: float = 10000.0) -> torch.Tensor:
    """Rotate each pair (x_k, x_{k+d/2}) of every vector of x (..., d) by positions · theta^(-2k/d).

    ``positions`` holds one position per vector: a number, or anything broadcastable to x.shape[:-1]
    (e.g. (B, 1, T) for x of shape (B, H, T, d)). Positions may be negative or fractional.
    """
    out = x.clone()
    d = x.shape[-1]
    positions = torch.as_tensor(positions).expand(x.shape[:-1])
    for index in itertools.product(*(range(n) for n in x.shape[:-1])):
        p = positions[index].item()
        for k in range(d // 2):
            a = p * theta ** (-2 * k / d)
            x1, x2 = x[index + (k,)], x[index + (k + d // 2,)]
            out[index + (k,)] = x1 * math.cos(a) - x2 * math.sin(a)
            out[index + (k + d // 2,)] = x1 * math.sin(a) + x2 * math.cos(a)
    return out


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax_j(q_i·k_j/√D) v_j over j ≤ i for q (B, H, T, D) and k, v (B, H_kv, T, D): (B, H, T, D).

    Query head h reads key/value head h // (H / H_kv) (multi-query and grouped-query attention).
    """
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    y = torch.zeros(B, H, T, D, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)
            for i in range(T):
                scores = torch.stack([q[b, h, i] @ k[b, g, j] / math.sqrt(D) for j in range(i + 1)])
                w = scores.softmax(0)
                y[b, h, i] = sum(w[j] * v[b, g, j] for j in range(i + 1))
    return y
