"""Token mixers and the other building blocks the model skeleton plugs together."""

from .attention import CausalSelfAttention
from .context import MixerContext
from .cross_attention import CrossAttention
from .ffn import MLP, SwiGLU, build_ffn
from .masks import attention_bias_mask, padding_mask
from .norms import build_norm
from .rotary import RotaryEmbedding, apply_rotary

__all__ = [
    "MLP",
    "CausalSelfAttention",
    "CrossAttention",
    "MixerContext",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "attention_bias_mask",
    "build_ffn",
    "build_norm",
    "padding_mask",
]
