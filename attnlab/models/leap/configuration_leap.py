"""LEAP configuration: the skeleton's fields plus the token mixer and its per-layer windows."""

from __future__ import annotations

from ...errors import ConfigError
from ..config import AttnLabConfig

MIXERS = ("leap", "fastformer")


class LeapConfig(AttnLabConfig):
    """Defaults follow leap-transformer 1.0: learned positions, pre-norm, tied head, dropout 0.1, windowed
    ("local") attention with k_l = 4·2^l in layer l and a global last layer."""

    model_type = "attnlab_leap"
    option_help = {
        "mixer": "`leap` (query-gated focus attention) or `fastformer` (the causal Fastformer of Wu et al. 2021)",
        "use_local_att": "windowed layers with k_l = 4·2^l in layer l, the last layer global; false: every layer "
                         "global",
        "window_sizes": "per-layer windows overriding that rule, one entry per layer: an integer k ≥ 1 or null for "
                        "global (`--set window_sizes=[4,16,64,null]`); only with use_local_att",
        "dropout": "as in leap-transformer 1.0 (after each mixer and FFN)",
    }

    dropout: float = 0.1
    mixer: str = "leap"
    use_local_att: bool = True
    window_sizes: list | None = None

    @property
    def layer_windows(self) -> list[int | None]:
        """The window of each layer, None for global attention."""
        if not self.use_local_att:
            return [None] * self.n_layers
        if self.window_sizes is not None:
            return list(self.window_sizes)
        return [4 * 2**layer for layer in range(self.n_layers - 1)] + [None]

    def check(self) -> None:
        super().check()
        if self.mixer not in MIXERS:
            raise ConfigError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.window_sizes is not None:
            if not self.use_local_att:
                raise ConfigError("window_sizes is set but use_local_att is false (every layer would be global)")
            if len(self.window_sizes) != self.n_layers:
                raise ConfigError(
                    f"window_sizes needs one entry per layer ({self.n_layers}), got {len(self.window_sizes)}"
                )
            for k in self.window_sizes:
                if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                    raise ConfigError(f"window_sizes entries must be integers >= 1 or None (global), got {k!r}")
        if self.mixer == "fastformer":
            if self.n_kv_heads != self.n_heads:
                raise ConfigError("mixer='fastformer' has no key/value head groups: n_kv_heads must equal n_heads")
            if self.pos == "rope":
                raise ConfigError("mixer='fastformer' mixes by element-wise products, which RoPE cannot rotate: "
                                  "use pos='learned' or 'none'")


# Named sizes; vocab_size is filled in from the tokenizer at training time. "tiny" and "small" match the
# GPT presets of the same name (same width, depth, heads and context) for side-by-side runs; "paper" is
# leap-transformer's experiment (d_model 128, 6 layers, windows 4..64 and a global layer, context 2048).
PRESETS: dict[str, dict] = {
    "debug": dict(d_model=32, n_layers=3, n_heads=4, block_size=64),
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, block_size=256),
    "small": dict(d_model=384, n_layers=6, n_heads=6, block_size=256, dropout=0.2),
    "paper": dict(d_model=128, n_layers=6, n_heads=4, block_size=2048),
}
