"""Configuration of the sequence-to-sequence Dual Attention Transformer: an encoder and a decoder of dual attention."""

from __future__ import annotations

from ...errors import ConfigError
from ...layers.ffn import FFNS
from ...options import Help
from ..config import POSITIONS
from .configuration_dat import DATConfig


class StackView:
    """One stack's view of a ``DATSeq2SeqConfig``: its own head counts (and so head width), everything else the
    config's. What ``DualAttention`` and the blocks read, so one mixer class builds both stacks."""

    def __init__(self, config: DATConfig, n_heads_sa: int, n_heads_ra: int):
        self._config = config
        self.n_heads_sa, self.n_heads_ra = n_heads_sa, n_heads_ra
        self.n_heads = n_heads_sa + n_heads_ra

    @property
    def head_dim(self) -> int:
        return self._config.d_model // self.n_heads

    def __getattr__(self, name: str):
        return getattr(self._config, name)


class DATSeq2SeqConfig(DATConfig):
    """The DAT options for an encoder of ``n_layers`` layers (``n_heads_sa`` + ``n_heads_ra`` heads, non-causal)
    and a decoder of ``decoder_layers`` layers (``decoder_heads_sa`` + ``decoder_heads_ra`` causal heads, then
    ``cross_heads`` of cross-attention over the encoder's output).

    The relation options (``n_relations``, ``rel_proj_dim``, ``symmetric_rels``, ...) and the symbol retriever
    are shared by both stacks, as in the ``dual-attention`` package; relation defaults follow the encoder's
    relational heads, or the decoder's when the encoder has none. ``n_heads_ra=0`` and ``decoder_heads_ra=0``
    is the Transformer baseline, with the same parameter names. ``vocab_size``/``block_size`` are the target's,
    ``source_vocab_size``/``source_block_size`` the source's.
    """

    model_type = "attnlab_dat_seq2seq"
    ffn_kinds = FFNS + ("relu",)
    position_kinds = ("sinusoidal",) + POSITIONS
    option_help = {
        "n_layers": "encoder layers",
        "n_heads_sa": "encoder self-attention heads",
        "n_heads_ra": "encoder relational heads (0 in both stacks: the Transformer baseline)",
        "n_heads": Help("derived: set n_heads_sa and n_heads_ra instead", "n_heads_sa + n_heads_ra (the encoder's)"),
        "decoder_layers": Help("decoder layers", "n_layers"),
        "decoder_heads_sa": Help("decoder self-attention heads (causal)", "n_heads_sa"),
        "decoder_heads_ra": Help("decoder relational heads (causal)", "n_heads_ra"),
        "cross_heads": Help("decoder heads of cross-attention over the encoder's output",
                            "decoder_heads_sa + decoder_heads_ra"),
        "vocab_size": "target vocabulary size (the decoder's embedding and the LM head)",
        "source_vocab_size": Help("source vocabulary size (the encoder's embedding)", "vocab_size"),
        "block_size": "longest target sequence (learned positions, positional symbols)",
        "source_block_size": Help("longest source sequence (learned positions, positional symbols)", "block_size"),
        "max_rel_pos": Help("largest offset with its own symbol (position_relative); the encoder sees offsets of "
                            "both signs", "max(block_size, source_block_size) − 1"),
        "ffn": "`relu` (the original Transformer's, the authors' seq2seq models'), `gelu` or `swiglu`",
        "d_ff": Help("FFN width", "4·d_model (ReLU, GELU), 8/3·d_model (SwiGLU)"),
        "pos": "positions: `sinusoidal` (fixed, the authors'), `learned`, `rope` or `none`",
        "norm_first": "pre-norm blocks (false: post-norm, x = norm(x + sublayer(x)), the authors' seq2seq setting)",
        "final_norm": "a norm after each pre-norm stack (the authors' seq2seq and vision models have none)",
        "scale_embeddings": "multiply token embeddings by √d_model before adding positions (the authors' seq2seq)",
        "lm_head_bias": "a bias on the LM head (the authors' seq2seq models have one, and an untied head: "
                        "`tie_word_embeddings=false`)",
        "decoder_start_token_id": "the token the decoder starts from; labels are shifted right behind it",
        "n_kv_heads": Help("key/value heads of every attention (each head kind of both stacks, cross-attention): "
                           "min(n_kv_heads, its heads)", "MHA"),
    }

    n_layers: int = 2
    pos: str = "sinusoidal"
    ffn: str = "relu"
    decoder_layers: int | None = None
    decoder_heads_sa: int | None = None
    decoder_heads_ra: int | None = None
    cross_heads: int | None = None
    source_vocab_size: int | None = None
    source_block_size: int | None = None
    norm_first: bool = True
    final_norm: bool = True
    scale_embeddings: bool = True
    lm_head_bias: bool = False
    decoder_start_token_id: int | None = None

    def __post_init__(self, **kwargs):
        mha = self.n_kv_heads is None  # stays None: MHA in every attention, whatever its head count
        self.is_encoder_decoder = True
        kwargs.pop("is_encoder_decoder", None)
        for name, default in (("decoder_layers", self.n_layers), ("decoder_heads_sa", self.n_heads_sa),
                              ("decoder_heads_ra", self.n_heads_ra), ("source_vocab_size", self.vocab_size),
                              ("source_block_size", self.block_size)):
            if getattr(self, name) is None:
                setattr(self, name, default)
        if self.cross_heads is None:
            self.cross_heads = self.decoder_heads_sa + self.decoder_heads_ra
        if self.d_ff is None and self.ffn == "relu":
            self.d_ff = 4 * self.d_model
        if self.max_rel_pos is None:
            self.max_rel_pos = max(self.block_size, self.source_block_size) - 1
        if not self.n_heads_ra and self.decoder_heads_ra:  # relation defaults from the decoder's heads
            decoder = self.stack("decoder")
            if self.n_relations is None:
                self.n_relations = self.decoder_heads_ra
            if self.rel_proj_dim is None and self.d_model % decoder.n_heads == 0:
                width = decoder.head_dim * self.decoder_heads_ra
                self.rel_proj_dim = width // self.n_relations if width % self.n_relations == 0 else 0
        super().__post_init__(**kwargs)
        if mha:
            self.n_kv_heads = None

    def kv_heads(self, kind_heads: int) -> int:
        """Key/value heads of an attention with ``kind_heads`` query heads (None: MHA everywhere)."""
        return kind_heads if self.n_kv_heads is None else min(self.n_kv_heads, kind_heads)

    def stack(self, which: str) -> DATConfig | StackView:
        """The config the ``which`` ("encoder" or "decoder") stack's layers are built from."""
        if which == "encoder":
            return self
        return StackView(self, self.decoder_heads_sa, self.decoder_heads_ra)

    @property
    def symbol_positions(self) -> int:
        """Positions a positional symbol library must cover: the longer of source and target."""
        return max(self.block_size, self.source_block_size)

    def check(self) -> None:
        for name in ("decoder_heads_sa", "decoder_heads_ra"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("decoder_layers", "cross_heads", "source_vocab_size", "source_block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        mha = self.n_kv_heads is None
        if mha:  # the skeleton's checks read MHA as n_kv_heads = n_heads
            self.n_kv_heads = self.n_heads
        try:
            super().check()
        finally:
            if mha:
                self.n_kv_heads = None
        decoder_heads = self.decoder_heads_sa + self.decoder_heads_ra
        if decoder_heads == 0:
            raise ConfigError("the decoder needs a head: decoder_heads_sa + decoder_heads_ra must be positive")
        for name, heads in (("decoder_heads_sa + decoder_heads_ra", decoder_heads), ("cross_heads", self.cross_heads)):
            if self.d_model % heads:
                raise ConfigError(f"d_model ({self.d_model}) must be divisible by {name} ({heads})")
        for name in ("decoder_heads_sa", "decoder_heads_ra", "cross_heads"):
            heads = getattr(self, name)
            if heads and heads % self.kv_heads(heads):
                raise ConfigError(f"{name} ({heads}) must be divisible by its key/value heads min(n_kv_heads, "
                                  f"{name}) = {self.kv_heads(heads)}")
        if self.pos == "rope" and self.stack("decoder").head_dim % 2:
            raise ConfigError("pos='rope' needs an even decoder head dimension, got "
                              f"d_model/(decoder_heads_sa + decoder_heads_ra) = {self.stack('decoder').head_dim}")
        if self.decoder_heads_ra and not self.n_heads_ra:
            self._check_relational()


# The math problem-solving runs of the paper (appendix; the authors' experiments/math/train_model.py): 2 + 2
# layers, d_model 128, dff 256, ReLU, post-LN, dropout 0.1, 8 heads in every attention, position-relative symbols;
# character vocabulary of 85 (pad '' = 0, ';' = 23 ends an answer, '@' = 28 starts the decoder), questions up to
# 161 characters, answers up to 31 (+ the start token).
_MATH = dict(
    d_model=128, n_layers=2, decoder_layers=2, d_ff=256, ffn="relu", norm_first=False, dropout=0.1,
    vocab_size=85, source_block_size=161, block_size=32, pad_token_id=0, eos_token_id=23, decoder_start_token_id=28,
    cross_heads=8, symbol_retrieval="position_relative", out_proj="per_kind",
)
PRESETS: dict[str, dict] = {
    "debug": dict(d_model=32, n_layers=2, n_heads_sa=2, n_heads_ra=2, block_size=32, vocab_size=64,
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=2, symbol_heads=2, n_symbols=16),
    "math-transformer": dict(_MATH, n_heads_sa=8, n_heads_ra=0),
    "math-dat-encoder": dict(_MATH, n_heads_sa=4, n_heads_ra=4, decoder_heads_sa=8, decoder_heads_ra=0),
    "math-dat": dict(_MATH, n_heads_sa=4, n_heads_ra=4),
}
