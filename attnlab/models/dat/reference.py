"""Build the authors' ``DualAttnTransformerLM`` (PyPI ``dual-attention`` 0.0.7) from a ``DATConfig``.

The inverse of ``convert.dat_config_from_authors``: ``authors_kwargs(config)`` are the constructor keyword
arguments of their model computing the same function as ``DATForCausalLM(config)`` once its weights are
converted by ``convert.convert_authors_state_dict``. ``attnlab bench`` uses it to time their implementation
beside ours at equal numerics (the ``dual-attention`` reference).

What they cannot express is a ``ConfigError``: no biases (their feed-forward layers and norms always have
them), untied embeddings, other norm epsilons or RoPE bases, relation maps of another width than the RA
heads. ``rel_form`` has no twin either way (both forms compute the same function) and is dropped. Their
query projections never have a bias; ours is zero after conversion.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import ConfigError
from .configuration_dat import DATConfig
from .convert import _RETRIEVERS

AUTHORS_RETRIEVERS = {ours: theirs for theirs, ours in _RETRIEVERS.items()}
POSITIONS = {"learned": "pos_emb", "rope": "RoPE"}
THEIR_ROPE_THETA = 10000.0  # precompute_freqs_cis's default, which their model uses
THEIR_NORM_EPS = 1e-5  # torch's LayerNorm default, which their create_norm uses


def authors_kwargs(config: DATConfig) -> dict[str, Any]:
    """``DualAttnTransformerLM(**authors_kwargs(config))`` is ``config``'s model in the authors' package."""
    _refuse_what_has_no_twin(config)
    kv = _kv_heads(config)
    bias = dict(add_bias_kv=True, add_bias_out=True)  # bias=True: ours has k/v/out biases, as these give them
    ra_kwargs = dict(n_kv_heads=kv, n_relations=config.n_relations, rel_activation=config.rel_activation,
                     rel_proj_dim=config.rel_proj_dim, symmetric_rels=config.symmetric_rels,
                     use_relative_positional_symbols=config.symbol_retrieval == "position_relative", **bias)
    return dict(
        vocab_size=config.vocab_size, d_model=config.d_model, n_layers=config.n_layers,
        n_heads_sa=config.n_heads_sa, n_heads_ra=config.n_heads_ra,
        symbol_retrieval_kwargs=_symbol_kwargs(config), dff=config.d_ff, dropout_rate=config.dropout,
        activation=config.ffn, norm_first=True, max_block_size=config.block_size, norm_type=config.norm,
        sa_kwargs=dict(n_kv_heads=kv, **bias), ra_kwargs=ra_kwargs,
        symbol_retrieval=AUTHORS_RETRIEVERS[config.symbol_retrieval], pos_enc_type=POSITIONS[config.pos],
        bias=config.bias,
    )


def build_authors_model(config: DATConfig) -> nn.Module:
    """Their model for ``config`` (raises ImportError without ``pip install --no-deps dual-attention==0.0.7 einops``)."""
    from dual_attention.language_models import DualAttnTransformerLM

    return DualAttnTransformerLM(**authors_kwargs(config))


def _refuse_what_has_no_twin(config: DATConfig) -> None:
    """One ConfigError naming every setting their model cannot reproduce."""
    unsupported = {
        "bias=False (their feed-forward layers and norms always have biases)": not config.bias,
        "tie_word_embeddings=False": not config.tie_word_embeddings,
        f"pos={config.pos!r}": config.pos not in POSITIONS,
        f"ffn={config.ffn!r}": config.ffn not in ("gelu", "swiglu"),
        f"norm={config.norm!r}": config.norm not in ("layernorm", "rmsnorm"),
        f"norm_eps={config.norm_eps}": config.norm_eps != THEIR_NORM_EPS,
        f"rope_theta={config.rope_theta}": config.pos == "rope" and config.rope_theta != THEIR_ROPE_THETA,
        f"rel_proj_dim·n_relations != the RA heads' width ({config.rel_proj_dim}·{config.n_relations})": (
            config.n_heads_ra > 0 and config.rel_proj_dim * config.n_relations != config.head_dim * config.n_heads_ra),
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ConfigError(f"no DualAttnTransformerLM twin for this DAT config: {', '.join(bad)}")


def _kv_heads(config: DATConfig) -> int | None:
    """Their ``n_kv_heads``, one value for both kinds: None when every kind is MHA (the round trip restores ours).

    Below the larger kind's heads it is the same for both kinds: it divides that kind's heads and n_heads, so
    it divides the other kind's heads too, hence min(n_kv_heads, heads) is n_kv_heads for each.
    """
    heads = [h for h in (config.n_heads_sa, config.n_heads_ra) if h]
    return None if config.n_kv_heads >= max(heads) else config.n_kv_heads


def _symbol_kwargs(config: DATConfig) -> dict[str, Any]:
    if config.symbol_retrieval == "symbolic_attention":
        return dict(d_model=config.d_model, n_symbols=config.n_symbols, n_heads=config.symbol_heads,
                    trainable_symbols=config.trainable_symbols)
    if config.symbol_retrieval == "positional":
        return dict(symbol_dim=config.d_model, max_length=config.block_size)
    return dict(symbol_dim=config.d_model, max_rel_pos=config.max_rel_pos)
