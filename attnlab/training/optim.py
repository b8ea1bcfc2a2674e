"""AdamW or SophiaG with decoupled weight decay on matrices only, and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig
from .sophia import HessianRefresh, SophiaG


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Decay weight matrices; never norms or biases; embeddings only when asked (they are rows, not maps)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        is_embedding = id(param) in embedding_ids
        if param.dim() >= 2 and (decay_embeddings or not is_embedding):
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings)
    if cfg.optimizer == "sophia":
        return SophiaG(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), rho=cfg.sophia_rho)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def curvature_refresh(optimizer: torch.optim.Optimizer, cfg: TrainConfig, rank: int, world_size: int) -> HessianRefresh | None:
    """What the optimizer needs between steps besides gradients: SophiaG's Hessian refresh, or nothing."""
    if isinstance(optimizer, SophiaG):
        return HessianRefresh(optimizer, cfg.hessian_interval, cfg.seed, rank, world_size)
    return None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay from lr to min_lr at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(progress, 1.0)
    return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * progress))
