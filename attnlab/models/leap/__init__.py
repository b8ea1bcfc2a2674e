from ..registry import Family
from .configuration_leap import PRESETS, LeapConfig
from .modeling_leap import LeapForCausalLM

FAMILY = Family(
    name="leap",
    config_class=LeapConfig,
    model_class=LeapForCausalLM,
    presets=PRESETS,
    description="LEAP: linear additive attention, windowed in O(N), recurrent O(1)-state generation",
)

__all__ = ["FAMILY", "LeapConfig", "LeapForCausalLM"]
