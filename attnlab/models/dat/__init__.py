from ...layers.dual_attention import DATCache, DualAttention
from ..registry import Family
from .configuration_dat import PRESETS, DATConfig
from .modeling_dat import DATForCausalLM

FAMILY = Family(
    name="dat",
    config_class=DATConfig,
    model_class=DATForCausalLM,
    presets=PRESETS,
    description="Dual Attention Transformer: self-attention + relational heads with symbol retrieval",
)

__all__ = ["FAMILY", "DATCache", "DATConfig", "DATForCausalLM", "DualAttention"]
