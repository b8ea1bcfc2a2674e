"""Warm-start the word embeddings from any Hugging Face causal LM (the LSW Transformer description uses
facebook/opt-125m)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ConfigError


def warm_start_embeddings(model, source: str):
    """Copy ``source``'s input embedding matrix into ``model``'s; return ``source``'s tokenizer (or None).

    ``source`` is a local directory or a hub name (when online). The embedding widths must agree (LSW:
    ``d_emb``); rows are copied for the ids both vocabularies have, the rest keep their initialisation.
    """
    try:
        donor = AutoModelForCausalLM.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - missing, damaged or foreign: whatever the donor is, one line
        lines = str(exc).strip().splitlines()
        raise ConfigError(f"cannot load a causal LM from {source!r}: {type(exc).__name__}: "
                          f"{lines[0][:200] if lines else ''}") from None
    src, dst = donor.get_input_embeddings().weight, model.get_input_embeddings().weight
    if src.shape[1] != dst.shape[1]:
        raise ConfigError(
            f"{source} has {src.shape[1]}-wide embeddings but the model's are {dst.shape[1]} wide "
            f"(set d_emb={src.shape[1]})"
        )
    rows = min(src.shape[0], dst.shape[0])
    with torch.no_grad():
        dst[:rows].copy_(src[:rows].to(dst.dtype))
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return None
