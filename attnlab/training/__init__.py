"""The attnlab trainer: AdamW + warmup/cosine, accumulation, bf16 autocast, DDP or FSDP, exact resume."""

from .config import TrainConfig, read_config_file
from .trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "read_config_file", "train"]
