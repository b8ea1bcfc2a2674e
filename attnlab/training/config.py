"""Every option of a training run, with the checks that turn impossible settings into one-line errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import Options

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw", "sophia")


@dataclass
class TrainConfig(Options):
    option_kind = "training"
    # model
    model: str = "gpt"
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    data: str = "shakespeare"
    text_field: str = "text"
    hf_config: str | None = None
    hf_split: str = "train"
    max_docs: int | None = None
    tokenizer: str = "byte"
    vocab_size: int = 4096
    val_fraction: float = 0.1
    # batching: batch_size sequences of block_size tokens per process and micro-step
    batch_size: int = 16
    block_size: int | None = None
    tokens_per_step: int | None = None
    # optimisation
    optimizer: str = "adamw"
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float | None = None
    warmup_steps: int | None = None  # default: min(100, max_steps // 10)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    decay_embeddings: bool = False
    sophia_rho: float = 0.04
    hessian_interval: int = 10
    # Transformer-XL training: each batch row reads its own stream of consecutive segments, memory carried
    segment_stream: bool = False
    # copy the input embeddings (and take the tokenizer) of a HF causal LM: a local path or a hub name
    warm_start: str | None = None
    # runtime
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False
    seed: int = 1337
    # evaluation, logging, checkpoints
    eval_interval: int = 200
    eval_tokens: int | None = 65536
    log_interval: int = 10
    checkpoint_interval: int | None = None
    sample_tokens: int = 200
    sample_prompt: str = "\n"
    out_dir: str | None = None
    resume: bool = False
    max_minutes: float | None = None
    stop_at_step: int | None = None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.max_steps // 10)
        self.check()

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.model}-{self.preset}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def save_every(self) -> int:
        return self.checkpoint_interval or self.eval_interval

    def check(self) -> None:
        positive = ["batch_size", "max_steps", "eval_interval", "log_interval", "vocab_size", "hessian_interval"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("block_size", "tokens_per_step", "checkpoint_interval", "eval_tokens", "stop_at_step"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.lr <= 0 or self.final_lr < 0 or self.final_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ConfigError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")
        if not 0 < self.val_fraction <= 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5], got {self.val_fraction}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.sophia_rho <= 0:
            raise ConfigError(f"sophia_rho must be positive, got {self.sophia_rho}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")



def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file of training options (and a ``model_overrides`` mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise ConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must contain a mapping of option: value")
    return values
