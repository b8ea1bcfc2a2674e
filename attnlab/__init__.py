"""attnlab: causal language models with attention that is not plain softmax attention.

Importing attnlab registers every model family with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from pathlib import Path

from .api import evaluate, generate, generate_batch, info, train
from .errors import AttnlabError, ConfigError, CorruptFileError, DataError, TrainingInterrupted, WriteError
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
    as an adapter loads as its base with the adapter merged in. Config and weights are checked first: a damaged
    or foreign file raises ``CorruptFileError`` naming it (see ``attnlab.loading``)."""
    from .loading import load_model

    return load_model(path, device=device)


def load_tokenizer(path: str | Path):
    """The tokenizer saved beside a model (every attnlab run saves one), checked like ``load``."""
    from .loading import load_tokenizer as load_checked_tokenizer

    return load_checked_tokenizer(path)


__all__ = [
    "AttnLabConfig",
    "AttnLabForCausalLM",
    "AttnlabError",
    "ConfigError",
    "CorruptFileError",
    "DataError",
    "GPTConfig",
    "GPTForCausalLM",
    "TrainingInterrupted",
    "WriteError",
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
