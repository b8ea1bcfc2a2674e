"""attnlab: causal language models with attention that is not plain softmax attention.

Importing attnlab registers every model family with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from pathlib import Path

from .api import evaluate, generate, generate_batch, info, train
from .errors import AttnlabError, ConfigError, DataError
from .models import (
    AttnLabConfig,
    AttnLabForCausalLM,
    GPTConfig,
    GPTForCausalLM,
    build_config,
    create_model,
    list_models,
)

__version__ = "0.1.0"


def load(path: str | Path, *, device: str | None = None) -> AttnLabForCausalLM:
    """Load a saved run directory or any HF-format directory of an attnlab model, in eval mode; a LoRA run kept
    as an adapter loads as its base with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "adapter" / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        from .training.finetune import load_adapter_run

        model = load_adapter_run(path / "adapter")  # a LoRA run saved without merging
    elif not (path / "config.json").is_file():
        raise DataError(f"{path} is not a saved model: no config.json there (pass a run directory)")
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(path: str | Path):
    """The tokenizer saved beside a model (every attnlab run saves one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(path))


__all__ = [
    "AttnLabConfig",
    "AttnLabForCausalLM",
    "AttnlabError",
    "ConfigError",
    "DataError",
    "GPTConfig",
    "GPTForCausalLM",
    "build_config",
    "create_model",
    "evaluate",
    "generate",
    "generate_batch",
    "info",
    "list_models",
    "load",
    "load_tokenizer",
    "train",
]
