"""Causal additive attention (LEAP, causal Fastformer): the chunked scan in ``scan``, its slow reference
in ``naive`` (imported by the tests only)."""

from .scan import CHUNK, NEG, State, additive_attention, prefix_scan, token_states, window_scan, window_weights

__all__ = [
    "CHUNK",
    "NEG",
    "State",
    "additive_attention",
    "prefix_scan",
    "token_states",
    "window_scan",
    "window_weights",
]
