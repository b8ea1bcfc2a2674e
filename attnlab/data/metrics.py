"""Language-model metrics that stay comparable when the tokenizer changes."""

from __future__ import annotations

import math

_MAX_LOG = 700.0  # exp(709.8) overflows a float64


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood (nats) over the UTF-8 bytes it covers, in bits: a per-byte scale on
    which a byte-level and a BPE model of the same text can be compared, unlike per-token loss."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {n_bytes}")
    return total_nll_nats / (math.log(2) * n_bytes)


def perplexity(mean_nll: float) -> float:
    """exp(mean per-token NLL), capped near the float64 limit so an untrained model gives a huge finite
    number instead of an OverflowError."""
    return math.exp(min(mean_nll, _MAX_LOG))
