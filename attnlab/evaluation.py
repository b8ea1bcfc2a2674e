"""Validation metrics that compare across tokenizers: loss, perplexity and bits per byte."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.metrics import bits_per_byte, perplexity
from .errors import ConfigError


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
    memory: bool = False,
    eos_token_id: int | None = None,
) -> dict[str, float]:
    """Every target of ``split`` (up to ``max_tokens``) predicted once with ``block_size`` context windows.

    bits per byte = Σ NLL (nats) / (ln 2 · Σ UTF-8 bytes of the target tokens), so a byte-level and a BPE
    model of the same text are on one scale.

    ``memory=True`` (Transformer-XL models, as trained with segment streaming) reads the split as
    contiguous streams of consecutive segments and carries the model's memory from one to the next, reset
    at ``eos_token_id`` document boundaries, so each segment also sees the text before it.
    """
    if memory and not model.config.carries_memory:
        raise ConfigError(f"memory evaluation needs a model with XL memory (mem_len > 0); {model.config.model_type} has none")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    byte_table = torch.as_tensor(byte_lengths, dtype=torch.float64)
    total_nll, total_tokens, total_bytes = 0.0, 0, 0.0
    if memory:
        batches = split.eval_streams(batch_size, block_size, max_tokens, eos_token_id)
    else:
        batches = ((x, y, None) for x, y in split.eval_batches(batch_size, block_size, max_tokens))
    cache = None
    for x, y, docs in batches:
        x, y = x.to(device), y.to(device)
        inputs: dict = {"use_cache": False}
        if docs is not None:
            if cache is None or x.shape[0] != batch_size:  # the leftover row starts a stream of its own
                cache = model.make_cache()
            inputs = {"cache": cache, "use_cache": True, "document_ids": docs.to(device)}
        with autocast_context(device, dtype):
            logits = model(input_ids=x, **inputs).logits
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
