"""LSW Transformer configuration and the size presets of the LSW Transformer description."""

from __future__ import annotations

from ...errors import ConfigError
from ...options import Help
from ..config import AttnLabConfig


class LSWConfig(AttnLabConfig):
    """LSW defaults: reversed RoPE, RMSNorm pre-norm, SwiGLU (hidden 4·d_model), no biases, tied head."""

    model_type = "attnlab_lsw"
    option_help = {
        "d_emb": Help("width of the token embedding and tied LM head; W_in / W_out always map it to and from "
                      "d_model, as in the LSW Transformer description's parameter counts", "d_model"),
        "mem_len": "Transformer-XL memory per layer, in tokens (0: none while training; generation then keeps the "
                   "whole context like a plain KV cache)",
        "n_registers": "learned key/value slots per layer that every query may attend to (attention sinks)",
        "simctg_margin": "margin ρ of the SimCTG contrastive loss (Su et al. 2022)",
        "simctg_weight": "weight of the SimCTG loss, added in training only so validation losses stay comparable "
                         "(0: off; the size-table presets use 1)",
        "d_ff": Help("SwiGLU hidden width", "4·d_model"),
        "pos": "positions; `rope` is reversed RoPE here: the newest token is position 0",
        "rope_theta": "RoPE base of the reversed rotary code (500000: the Llama-3 base)",
    }

    d_emb: int | None = None
    mem_len: int = 256
    n_registers: int = 4
    simctg_margin: float = 0.5
    simctg_weight: float = 0.0
    ffn: str = "swiglu"
    pos: str = "rope"
    norm: str = "rmsnorm"
    bias: bool = False
    rope_theta: float = 500000.0

    def __post_init__(self, **kwargs):
        if self.d_emb is None:
            self.d_emb = self.d_model
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        super().__post_init__(**kwargs)

    @property
    def carries_memory(self) -> bool:
        return bool(self.mem_len)

    def check(self) -> None:
        super().check()
        if not isinstance(self.d_emb, int) or self.d_emb <= 0:
            raise ConfigError(f"d_emb must be a positive integer, got {self.d_emb!r}")
        for name in ("mem_len", "n_registers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.simctg_margin < 0 or self.simctg_weight < 0:
            raise ConfigError(
                f"simctg_margin and simctg_weight must be >= 0, got {self.simctg_margin}, {self.simctg_weight}"
            )
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")


# The LSW Transformer description's size table: (d_model, layers, heads), d_key = 64, a 50272-token vocabulary (OPT's) and
# d_emb = 768 (OPT-125m's embeddings, for warm starts). Segments (block_size) and memory are 2048 tokens, and
# SimCTG is on with the paper's weight 1.
_TABLE = {
    "tiny": (768, 12, 12),
    "small": (1024, 18, 16),
    "medium": (1536, 24, 24),
    "large": (2048, 36, 32),
    "xl": (3072, 48, 48),
    "xxl": (4096, 48, 64),
}
PRESETS: dict[str, dict] = {
    "debug": dict(d_model=32, n_layers=2, n_heads=4, d_emb=24, block_size=64, mem_len=64, n_registers=2),
    **{
        name: dict(d_model=d, n_layers=n, n_heads=h, d_emb=768, vocab_size=50272, block_size=2048, mem_len=2048,
             simctg_weight=1.0)
        for name, (d, n, h) in _TABLE.items()
    },
}
