"""Slow references of causal additive attention, written out from the math; the tests compare the fast
scan (``attnlab.ops.leap.scan``) with them. Nothing in attnlab imports this module.

For scores s (..., T) and vectors v (..., T, D), position i averages the vectors of its causal window
W(i) = {max(0, i-k+1), ..., i} (all of 0..i when global), weighted by a softmax over the window's scores
(eq. 4 and 9 of the LEAP package description):

    g_i = Σ_{l∈W(i)} exp(s_l) v_l / Σ_{l∈W(i)} exp(s_l)

``naive_additive`` evaluates exactly this sum, one position and one token at a time in fp64, with
padded tokens left out of both sums. ``dense_reference`` is the same average as an explicit masked
softmax per block of query rows (O(T²) work), for sequences too long for the loop.
"""

from __future__ import annotations

import math

import torch


def naive_additive(
    scores: torch.Tensor, values: torch.Tensor, window: int | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """g_i = Σ_{l∈W(i)} exp(s_l) v_l / Σ_{l∈W(i)} exp(s_l), position by position in fp64 (zero where W(i)
    has no real token); ``mask`` (broadcastable to scores, True = real token) leaves tokens out."""
    *lead, length = scores.shape
    s = scores.detach().double().reshape(-1, length)
    v = values.detach().double().reshape(-1, length, values.shape[-1])
    m = None if mask is None else mask.expand_as(scores).reshape(-1, length)
    out = torch.zeros_like(v)
    for r in range(s.shape[0]):
        for i in range(length):
            first = 0 if window is None else max(i - window + 1, 0)
            window_ids = [l for l in range(first, i + 1) if m is None or m[r, l]]
            if window_ids:
                den = sum(math.exp(s[r, l]) for l in window_ids)
                out[r, i] = sum(math.exp(s[r, l]) * v[r, l] for l in window_ids) / den
    return out.reshape(*lead, length, values.shape[-1])


def dense_reference(
    scores: torch.Tensor, values: torch.Tensor, window: int | None = None, rows: int = 1024
) -> torch.Tensor:
    """The same g_i for long inputs in fp64: an explicit masked softmax per block of ``rows`` query rows."""
    s, v = scores.double(), values.double()
    length = s.shape[-1]
    out = torch.empty(*s.shape, v.shape[-1], dtype=torch.float64)
    for r0 in range(0, length, rows):
        r1 = min(r0 + rows, length)
        c0 = 0 if window is None else max(r0 - window + 1, 0)
        i = torch.arange(r0, r1)[:, None]
        l = torch.arange(c0, r1)[None, :]
        allowed = (l <= i) & (True if window is None else l > i - window)
        w = s[..., None, c0:r1].masked_fill(~allowed, float("-inf")).softmax(-1)
        out[..., r0:r1, :] = w @ v[..., c0:r1, :]
    return out
