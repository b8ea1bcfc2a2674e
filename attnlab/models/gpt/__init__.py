from .configuration_gpt import GPTConfig
from .modeling_gpt import GPTForCausalLM

__all__ = ["GPTConfig", "GPTForCausalLM"]
