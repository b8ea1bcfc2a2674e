"""Build transformers' ``GPT2LMHeadModel`` at a ``GPTConfig``'s size: the ``hf-gpt2`` reference of ``attnlab bench``.

Same function as our GPT baseline at GPT-2's settings (learned positions, pre-norm LayerNorm, the tanh GELU
MLP, biases, tied head, one key/value head per query head): transformers' own implementation of it, with
its default SDPA attention, timed beside ours. A config GPT-2 cannot express (RoPE, RMSNorm, SwiGLU,
grouped key/value heads, no biases, untied embeddings) is a ``ConfigError``.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from ..config import AttnLabConfig


def gpt2_kwargs(config: AttnLabConfig) -> dict:
    """``GPT2Config(**gpt2_kwargs(config))``: GPT-2 at ``config``'s size and dropout."""
    unsupported = {
        f"pos={config.pos!r}": config.pos != "learned",
        f"norm={config.norm!r}": config.norm != "layernorm",
        f"ffn={config.ffn!r}": config.ffn != "gelu",
        "n_kv_heads < n_heads": config.n_kv_heads != config.n_heads,
        "bias=False": not config.bias,
        "tie_word_embeddings=False": not config.tie_word_embeddings,
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ConfigError(f"no GPT-2 twin for this GPT config: {', '.join(bad)}")
    return dict(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.d_model,
                n_layer=config.n_layers, n_head=config.n_heads, n_inner=config.d_ff,
                activation_function="gelu_new", resid_pdrop=config.dropout, embd_pdrop=config.dropout,
                attn_pdrop=config.dropout, layer_norm_epsilon=config.norm_eps, tie_word_embeddings=True,
                bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)


def build_gpt2(config: AttnLabConfig) -> nn.Module:
    """transformers' GPT-2 for ``config``, SDPA attention."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(**gpt2_kwargs(config), attn_implementation="sdpa"))
