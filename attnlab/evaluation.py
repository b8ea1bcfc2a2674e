"""Validation metrics that compare across tokenizers: loss, perplexity and bits per byte."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.metrics import bits_per_byte, perplexity


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or GPU when asked; a no-op for fp32."""
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split,
    *,
    byte_lengths: np.ndarray,
    batch_size: int,
    block_size: int,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
) -> dict[str, float]:
    """Every target of ``split`` (up to ``max_tokens``) predicted once with ``block_size`` context windows.

    bits per byte = Σ NLL (nats) / (ln 2 · Σ UTF-8 bytes of the target tokens), so a byte-level and a BPE
    model of the same text are on one scale.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    byte_table = torch.as_tensor(byte_lengths, dtype=torch.float64)
    total_nll, total_tokens, total_bytes = 0.0, 0, 0.0
    for x, y in split.eval_batches(batch_size, block_size, max_tokens):
        x, y = x.to(device), y.to(device)
        with autocast_context(device, dtype):
            logits = model(input_ids=x, use_cache=False).logits
        total_nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        total_tokens += y.numel()
        total_bytes += byte_table[y.cpu()].sum().item()
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("the evaluation split has no complete window; lower block_size")
    mean_nll = total_nll / total_tokens
    return {
        "loss": mean_nll,
        "ppl": perplexity(mean_nll),
        "bpb": bits_per_byte(total_nll, total_bytes) if total_bytes else float("nan"),
        "tokens": total_tokens,
    }
