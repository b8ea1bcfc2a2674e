from ...layers.moa_heads import MoACache
from ..registry import Family
from .configuration_moa import PRESETS, MoAMetricConfig
from .modeling_moa import BRANCHES, HEAD_TYPES, MoAMetricForCausalLM

FAMILY = Family(
    name="moa",
    config_class=MoAMetricConfig,
    model_class=MoAMetricForCausalLM,
    presets=PRESETS,
    description="MoA metric LM: routed conv / metric MHA / metric MQA / channel-mix heads, HyperFFN, ball pruning",
)

__all__ = ["BRANCHES", "FAMILY", "HEAD_TYPES", "MoACache", "MoAMetricConfig", "MoAMetricForCausalLM"]
