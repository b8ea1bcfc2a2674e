from ..registry import Family
from .configuration_gpt import PRESETS, GPTConfig
from .modeling_gpt import GPTForCausalLM

FAMILY = Family(
    name="gpt",
    config_class=GPTConfig,
    model_class=GPTForCausalLM,
    presets=PRESETS,
    description="GPT baseline: causal softmax attention (SDPA), MHA/GQA/MQA",
)

__all__ = ["FAMILY", "GPTConfig", "GPTForCausalLM"]
