"""Normalisation layers selectable by name."""

from __future__ import annotations

from torch import nn

NORMS = ("layernorm", "rmsnorm")


def build_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """``layernorm`` (with bias, as in GPT-2) or ``rmsnorm`` (as in LLaMA)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
