"""Configuration of the Dual Attention Transformer language model (DAT-LM)."""

from __future__ import annotations

from ...errors import ConfigError
from ...layers.relational import RELATION_ACTIVATIONS, RELATION_FORMS
from ...layers.symbols import SYMBOL_RETRIEVERS
from ...options import Help
from ..config import AttnLabConfig

OUT_PROJECTIONS = ("shared", "per_kind")


class DATConfig(AttnLabConfig):
    """Skeleton fields plus dual attention: ``n_heads_sa`` self-attention and ``n_heads_ra`` relational heads.

    ``n_heads`` is derived (n_heads_sa + n_heads_ra) and every head has d_model / n_heads dimensions.
    ``out_proj``: "shared", one d_model × d_model map over all heads; "per_kind", one map per head kind with
    the two outputs concatenated (block-diagonal), as in the ``dual-attention`` package and the released DAT-LMs.
    ``n_kv_heads`` counts key/value heads *per head kind*, as in the ``dual-attention`` package: each kind uses
    min(n_kv_heads, its heads), so the default (None) is MHA for both, 1 is MQA for both. With
    ``n_heads_ra=0`` the model is the GPT baseline with the same parameter names.
    """

    model_type = "attnlab_dat"
    option_help = {
        "n_heads": Help("derived: set n_heads_sa and n_heads_ra instead", "n_heads_sa + n_heads_ra"),
        "n_heads_sa": "self-attention heads",
        "n_heads_ra": "relational heads (0: exactly the GPT baseline, with the same parameter names)",
        "n_kv_heads": Help("key/value heads per head kind: each kind uses min(n_kv_heads, its heads), so 1 is MQA",
                           "MHA"),
        "n_relations": Help("relation dimension d_r, shared by the relational heads", "n_heads_ra"),
        "rel_proj_dim": Help("width of each relation's φ maps", "head_dim·n_heads_ra/n_relations"),
        "symmetric_rels": "φ_k = φ_q, so r_ij = r_ji",
        "rel_activation": "f of the relations: identity, relu, sigmoid, tanh, gelu, silu (all but identity "
                          "materialise the (B, d_r, N, N) relations)",
        "rel_form": "`auto` (direct below 4096 keys on the CPU, 256 on GPU, fused from there), `fused` (one SDPA "
                    "call, O(N) memory) or `direct` (α by blocks of queries)",
        "out_proj": "`shared` (one d_model × d_model map over all heads) or `per_kind` (one map per head kind, as "
                    "in the `dual-attention` package and the released DAT-LMs)",
        "symbol_retrieval": "`symbolic_attention` (attention over a learned library of `n_symbols`), `positional` "
                            "(a learned symbol per position) or `position_relative` (a learned symbol per offset up "
                            "to `max_rel_pos`)",
        "n_symbols": Help("size of the symbol library (symbolic_attention)", "d_model"),
        "symbol_heads": "heads of the symbolic attention",
        "trainable_symbols": "learn the symbol library (false: frozen, as in the released DAT-LMs)",
        "max_rel_pos": Help("largest offset with its own symbol (position_relative)", "block_size − 1"),
    }

    n_heads: int | None = None
    n_heads_sa: int = 2
    n_heads_ra: int = 2
    n_relations: int | None = None
    rel_proj_dim: int | None = None
    symmetric_rels: bool = False
    rel_activation: str = "identity"
    rel_form: str = "auto"
    out_proj: str = "shared"
    symbol_retrieval: str = "symbolic_attention"
    n_symbols: int | None = None
    symbol_heads: int = 4
    trainable_symbols: bool = True
    max_rel_pos: int | None = None

    def __post_init__(self, **kwargs):
        heads = self.n_heads_sa + self.n_heads_ra
        if self.n_heads is not None and self.n_heads != heads:
            raise ConfigError(
                f"n_heads is n_heads_sa + n_heads_ra = {heads} for dat; got n_heads={self.n_heads} "
                "(set n_heads_sa / n_heads_ra instead)"
            )
        self.n_heads = heads
        if self.n_relations is None:
            self.n_relations = self.n_heads_ra
        if self.n_symbols is None:
            self.n_symbols = self.d_model
        if self.max_rel_pos is None:
            self.max_rel_pos = self.block_size - 1
        if self.rel_proj_dim is None and self.n_heads_ra and self.n_relations and self.d_model % heads == 0:
            width = self.head_dim * self.n_heads_ra  # dual-attention's default: maps as wide as the RA heads
            self.rel_proj_dim = width // self.n_relations if width % self.n_relations == 0 else 0
        super().__post_init__(**kwargs)

    def kv_heads(self, kind_heads: int) -> int:
        """Key/value heads of a head kind with ``kind_heads`` query heads."""
        return min(self.n_kv_heads, kind_heads)

    def check(self) -> None:
        for name in ("n_heads_sa", "n_heads_ra"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.n_heads_sa + self.n_heads_ra == 0:
            raise ConfigError("dat needs at least one head: n_heads_sa + n_heads_ra must be positive")
        super().check()
        for kind in ("sa", "ra"):
            heads = getattr(self, f"n_heads_{kind}")
            if heads and heads % self.kv_heads(heads):
                raise ConfigError(
                    f"n_heads_{kind} ({heads}) must be divisible by its key/value heads min(n_kv_heads, "
                    f"n_heads_{kind}) = {self.kv_heads(heads)}"
                )
        if self.out_proj not in OUT_PROJECTIONS:
            raise ConfigError(f"out_proj must be one of {OUT_PROJECTIONS}, got {self.out_proj!r}")
        if self.n_heads_ra:
            self._check_relational()

    def _check_relational(self) -> None:
        if self.rel_activation not in RELATION_ACTIVATIONS:
            raise ConfigError(f"rel_activation must be one of {tuple(RELATION_ACTIVATIONS)}, got {self.rel_activation!r}")
        if self.rel_form not in RELATION_FORMS:
            raise ConfigError(f"rel_form must be one of {RELATION_FORMS}, got {self.rel_form!r}")
        if self.symbol_retrieval not in SYMBOL_RETRIEVERS:
            raise ConfigError(f"symbol_retrieval must be one of {SYMBOL_RETRIEVERS}, got {self.symbol_retrieval!r}")
        if self.rel_form == "fused" and self.rel_activation != "identity":
            raise ConfigError(f"rel_form='fused' needs rel_activation='identity' (got {self.rel_activation!r}); use 'auto'")
        if self.rel_form == "fused" and self.symbol_retrieval == "position_relative":
            raise ConfigError("rel_form='fused' cannot use position-relative symbols (they need explicit scores)")
        for name in ("n_relations", "n_symbols", "max_rel_pos", "symbol_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.rel_proj_dim, int) or self.rel_proj_dim <= 0:
            raise ConfigError(
                f"rel_proj_dim must be a positive integer; the default head_dim·n_heads_ra / n_relations = "
                f"{self.head_dim}·{self.n_heads_ra}/{self.n_relations} is not one, so set it"
            )
        if self.symbol_retrieval == "symbolic_attention" and self.d_model % self.symbol_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by symbol_heads ({self.symbol_heads})")


# Named sizes. "tiny"/"small" match the GPT presets' total heads (sa + ra = 4 / 6) for fair comparisons.
# "343m", "734m", "1.27b" are the released DAT-LM sizes (paper Table: d_model, 24 layers, heads, d_r,
# n_kv_heads; fineweb-edu with the GPT-2 tokenizer, 1024 context, RoPE, symbolic attention over a frozen
# library of d_model symbols with n_heads_sa symbol heads, an output projection per head kind; e.g.
# awni00/DAT-sa8-ra8-ns1024-sh8-nkvh4-343M).
_RELEASED = dict(
    n_layers=24, block_size=1024, vocab_size=50304, pos="rope", symbol_retrieval="symbolic_attention",
    trainable_symbols=False, out_proj="per_kind",
)
PRESETS: dict[str, dict] = {
    "debug": dict(d_model=32, n_layers=2, n_heads_sa=2, n_heads_ra=2, block_size=64, n_symbols=16, symbol_heads=2),
    "tiny": dict(d_model=128, n_layers=4, n_heads_sa=2, n_heads_ra=2, block_size=256, symbol_heads=4),
    "small": dict(d_model=384, n_layers=6, n_heads_sa=3, n_heads_ra=3, block_size=256, dropout=0.2, symbol_heads=6),
    "343m": dict(_RELEASED, d_model=1024, n_heads_sa=8, n_heads_ra=8, n_relations=64, n_kv_heads=4,
                 n_symbols=1024, symbol_heads=8),
    "734m": dict(_RELEASED, d_model=1536, n_heads_sa=12, n_heads_ra=12, n_relations=64, n_kv_heads=6,
                 n_symbols=1536, symbol_heads=12),
    "1.27b": dict(_RELEASED, d_model=2048, n_heads_sa=16, n_heads_ra=16, n_relations=128, n_kv_heads=8,
                  n_symbols=2048, symbol_heads=16),
}
