"""Build leap-transformer 1.0.1's ``LeapForCausalLM`` (PyPI ``leap-transformer``) at the dimensions of a ``LeapConfig``.

``attnlab bench`` times it beside ours (the ``leap-transformer`` reference): same width, depth, heads,
per-layer windows, context, vocabulary and dropout, the rest at their package's defaults. The two compute
different functions, so there are no shared weights or equal-logit checks; what differs:

* theirs normalises q, f, k and v per head without parameters before the focus scores ("rescale", default
  10: scale 10/head_dim instead of 1/√head_dim); ours scores the raw projections;
* theirs has no output projection after the heads and no projection biases; ours has W_o (and biases with
  ``bias=True``);
* theirs computes the windowed softmax as exp, then cumulative sums, and windows as differences of them, in
  the input dtype (overflow above scores of ~88 in fp32, cancellation in the differences); ours is the
  max-referenced chunked scan of ``attnlab.ops.leap``;
* theirs takes the exact (erf) GELU; ours the tanh one.

A config with no counterpart there (RoPE or no positions, RMSNorm, SwiGLU, grouped key/value heads, the
Fastformer mixer, untied embeddings) is a ``ConfigError``.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from .configuration_leap import LeapConfig


def reference_kwargs(config: LeapConfig) -> dict:
    """``leap.LeapConfig(**reference_kwargs(config))``: their model at ``config``'s dimensions."""
    unsupported = {
        f"pos={config.pos!r}": config.pos != "learned",
        f"norm={config.norm!r}": config.norm != "layernorm",
        f"ffn={config.ffn!r}": config.ffn != "gelu",
        f"mixer={config.mixer!r}": config.mixer != "leap",
        "n_kv_heads < n_heads": config.n_kv_heads != config.n_heads,
        "tie_word_embeddings=False": not config.tie_word_embeddings,
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ConfigError(f"no leap-transformer twin for this LEAP config: {', '.join(bad)}")
    windows = config.layer_windows
    kwargs = dict(hidden_size=config.d_model, vocab_size=config.vocab_size, n_head=config.n_heads,
                  n_positions=config.block_size, n_layer=config.n_layers, hidden_dropout_prob=config.dropout)
    if all(k is None for k in windows):
        return {**kwargs, "use_local_att": False}
    return {**kwargs, "use_local_att": True, "window_sizes": [config.block_size if k is None else k for k in windows]}


def build_reference_model(config: LeapConfig) -> nn.Module:
    """Their model for ``config`` (ImportError without ``pip install --no-deps leap-transformer==1.0.1``)."""
    import leap

    return leap.LeapForCausalLM(leap.LeapConfig(**reference_kwargs(config)))
