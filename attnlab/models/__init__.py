"""Model families on the shared skeleton, each in its own folder with a config and a modeling file."""

from .config import AttnLabConfig
from .gpt import GPTConfig, GPTForCausalLM
from .gpt.configuration_gpt import PRESETS as GPT_PRESETS
from .registry import Family, build_config, create_model, get_family, list_models, register_family
from .skeleton import AttnLabForCausalLM

register_family(
    Family(
        "gpt",
        GPTConfig,
        GPTForCausalLM,
        GPT_PRESETS,
        "GPT baseline: causal softmax attention (SDPA), MHA/GQA/MQA",
    )
)

__all__ = [
    "AttnLabConfig",
    "AttnLabForCausalLM",
    "Family",
    "GPTConfig",
    "GPTForCausalLM",
    "build_config",
    "create_model",
    "get_family",
    "list_models",
    "register_family",
]
