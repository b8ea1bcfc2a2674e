"""MoA metric LM configuration: the skeleton's fields plus the MoA-100M model card's own, under its own names."""

from __future__ import annotations

from ...errors import ConfigError
from ...layers.metric_attention import METRICS
from ...options import Help
from ..config import AttnLabConfig, Presets


class MoAMetricConfig(AttnLabConfig):
    """Mixture of attentions with metric heads, a token-wise router and a HyperFFN.

    The model card's names are aliases of the skeleton's (``dim`` = d_model, ``num_layers`` = n_layers,
    ``attn_heads`` = n_heads, ``ffn_hidden`` = d_ff, ``max_position_embeddings`` = block_size), so its example
    configuration loads as-is. ``ffn`` picks the HyperFFN's MLP branch (SwiGLU by default, as in the card).
    """

    model_type = "moa_metric"
    option_help = {
        "mqa_q_heads": Help("query heads of the metric MQA head (one shared key/value head)", "n_heads"),
        "mixer_hidden": Help("hidden width of the ChannelMixHead", "4·d_model"),
        "conv_kernel": "kernel of the LocalConvHead and of the HyperFFN's conv branch",
        "router_hidden": "hidden width of the token-wise router",
        "router_dropout": "dropout in the router",
        "router_temperature": "temperature T of the router's softmax over heads",
        "metric": "`l2` (‖q−k‖²), `cosine` (1 − cos) or `maha_diag` (learned diagonal Mahalanobis)",
        "alpha_init": "initial α_h of the attention weights ∝ exp(−α_h·d(q, k))",
        "learn_alpha": "learn α_h per head",
        "maha_init": "initial diagonal of the Mahalanobis metric",
        "attn_drop": "dropout on the attention weights",
        "proj_drop": "dropout on each head's output projection",
        "use_balls": "ball pruning: per head, keys outside a learned ball (origin, radius) are masked",
        "radius_init": "initial radius of the balls",
        "learn_radius": "learn the radii",
        "origin_init_scale": "standard deviation of the initial ball origins (0: all at zero)",
        "ball_softness": "τ of the soft ball edge 1 − e^{−(r − ‖φ(k) − o‖)/τ}",
        "ti_reg_weight": "weight of the triangle-inequality regulariser added to the training loss (0: off)",
        "ti_reg_samples": "triples sampled for that regulariser",
        "branch_router": "route tokens among the HyperFFN's three branches (false: average them)",
        "ffn_top_k": "HyperFFN branches each token runs (1 to 3)",
        "ffn_rank": Help("width of the HyperFFN's low-rank branch", "d_model/4"),
        "layer_scale_init": "initial LayerScale of both residual branches",
        "drop_path": "DropPath rate of both residual branches",
        "ffn": "the HyperFFN's MLP branch: `swiglu` (as in the MoA-100M model card) or `gelu`",
        "dim": "the MoA-100M model card's name of d_model",
        "num_layers": "the model card's name of n_layers",
        "attn_heads": "the model card's name of n_heads",
        "ffn_hidden": "the model card's name of d_ff",
    }
    attribute_map = {
        **AttnLabConfig.attribute_map,
        "dim": "d_model",
        "num_layers": "n_layers",
        "attn_heads": "n_heads",
        "ffn_hidden": "d_ff",
    }

    ffn: str = "swiglu"
    # heads and router
    mqa_q_heads: int | None = None
    mixer_hidden: int | None = None
    conv_kernel: int = 4
    router_hidden: int = 128
    router_dropout: float = 0.0
    router_temperature: float = 1.0
    # metric attention
    metric: str = "l2"
    alpha_init: float = 1.0
    learn_alpha: bool = True
    maha_init: float = 1.0
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    # ball pruning
    use_balls: bool = False
    radius_init: float = 3.0
    learn_radius: bool = True
    origin_init_scale: float = 0.0
    ball_softness: float = 1.0
    # triangle-inequality regulariser
    ti_reg_weight: float = 0.0
    ti_reg_samples: int = 256
    # HyperFFN and residual branches
    branch_router: bool = True
    ffn_top_k: int = 1
    ffn_rank: int | None = None
    layer_scale_init: float = 0.1
    drop_path: float = 0.0

    def __post_init__(self, **kwargs):
        # Apply the card's aliases first, so defaults derived from d_model (d_ff, mixer_hidden...) see them.
        for alias, name in self.attribute_map.items():
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        if self.mqa_q_heads is None:
            self.mqa_q_heads = self.n_heads
        if self.mixer_hidden is None:
            self.mixer_hidden = 4 * self.d_model
        if self.ffn_rank is None:
            self.ffn_rank = max(1, self.d_model // 4)
        super().__post_init__(**kwargs)

    def check(self) -> None:
        super().check()
        for name in ("mqa_q_heads", "mixer_hidden", "conv_kernel", "router_hidden", "ffn_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.mqa_q_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by mqa_q_heads ({self.mqa_q_heads})")
        if self.pos == "rope" and (self.d_model // self.mqa_q_heads) % 2:
            raise ConfigError("pos='rope' needs an even MQA head dimension (d_model / mqa_q_heads)")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("alpha_init", "maha_init", "router_temperature", "ball_softness", "layer_scale_init"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.origin_init_scale < 0:
            raise ConfigError(f"origin_init_scale must be >= 0, got {self.origin_init_scale}")
        for name in ("router_dropout", "attn_drop", "proj_drop", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 1 <= self.ffn_top_k <= 3:
            raise ConfigError(f"ffn_top_k must be 1, 2 or 3 (HyperFFN has three branches), got {self.ffn_top_k}")
        if self.ti_reg_weight < 0 or self.ti_reg_samples < 0:
            raise ConfigError("ti_reg_weight and ti_reg_samples must be >= 0")
        if self.ti_reg_weight > 0 and self.ti_reg_samples == 0:
            raise ConfigError("ti_reg_weight > 0 needs ti_reg_samples > 0 triples to sample")


# Named sizes; vocab_size is filled in from the tokenizer at training time. "card-example" is the example
# configuration of the MoA-100M model card (dim 768, 12 layers, GPT-2 vocabulary, context 2048); its first name,
# "seed", still works with a FutureWarning.
PRESETS: dict[str, dict] = Presets({
    # debug switches every mechanism on (balls, TI in training, top-1 routing) so the generic tests cover them
    "debug": dict(
        d_model=32, n_layers=2, n_heads=4, mqa_q_heads=2, block_size=64, router_hidden=16, mixer_hidden=64,
        use_balls=True, ti_reg_weight=0.01, ti_reg_samples=32,
    ),
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, block_size=256, router_hidden=32),
    "small": dict(d_model=384, n_layers=6, n_heads=6, block_size=256, router_hidden=64, dropout=0.2),
    "card-example": dict(
        vocab_size=50257, d_model=768, n_layers=12, n_heads=8, mqa_q_heads=8, mixer_hidden=3072, d_ff=3072,
        use_balls=True, router_dropout=0.1, attn_drop=0.1, proj_drop=0.1, block_size=2048,
        pad_token_id=50256, bos_token_id=50256, eos_token_id=50256,
    ),
}, renamed={"seed": "card-example"})
