"""The configuration every attnlab family shares: the skeleton's sizes and switches."""

from __future__ import annotations

from transformers import PreTrainedConfig

from ..errors import ConfigError
from ..layers.ffn import FFNS
from ..layers.norms import NORMS

POSITIONS = ("learned", "rope", "none")


class AttnLabConfig(PreTrainedConfig):
    """Skeleton fields: embeddings → n_layers × (norm → mixer → residual, norm → FFN → residual) → norm → head.

    Families subclass this and add the fields of their token mixer. ``d_ff=None`` resolves to 4·d_model for
    the GELU MLP and to 8/3·d_model (rounded up to a multiple of 64) for SwiGLU, which keeps the two at the
    same parameter count.
    """

    model_type = "attnlab"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "max_position_embeddings": "block_size",
        "intermediate_size": "d_ff",
    }

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    ffn: str = "gelu"
    pos: str = "learned"
    norm: str = "layernorm"
    block_size: int = 256
    rope_theta: float = 10000.0
    dropout: float = 0.0
    bias: bool = True
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        for alias, name in self.attribute_map.items():  # aliases first, so derived defaults see them
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.ffn == "gelu" else -(-8 * self.d_model // 3 // 64) * 64
        super().__post_init__(**kwargs)
        self.check()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def check(self) -> None:
        """Raise ``ConfigError`` with one clear line for any setting the model cannot be built with."""
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if self.ffn not in FFNS:
            raise ConfigError(f"ffn must be one of {FFNS}, got {self.ffn!r}")
        if self.pos not in POSITIONS:
            raise ConfigError(f"pos must be one of {POSITIONS}, got {self.pos!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"pos='rope' needs an even head dimension, got d_model/n_heads = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
