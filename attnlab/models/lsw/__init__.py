from ..registry import Family
from .configuration_lsw import PRESETS, LSWConfig
from .modeling_lsw import LSWForCausalLM

FAMILY = Family(
    name="lsw",
    config_class=LSWConfig,
    model_class=LSWForCausalLM,
    presets=PRESETS,
    description="LSW Transformer: XL memory, reversed RoPE, attention registers, d_emb projections, SimCTG",
)

__all__ = ["FAMILY", "LSWConfig", "LSWForCausalLM"]
