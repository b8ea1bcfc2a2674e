"""Look inside an attnlab model: per layer and head, what each family's mechanism does on one prompt.

``analyze(model, tokenizer, prompt)`` runs one forward pass (plus family hooks) and returns plain, JSON-ready
Python data (lists of floats, no tensors), so the same result feeds the web app (``attnlab viz``), a notebook,
or a file (``export_json``). Everything is recomputed from the model's own modules and weights through forward
hooks; no model code is changed, so what you see is exactly what the forward pass computed.

Per layer, what the family's model says it shows (``analysis_probes``/``analysis_layers`` of
``AttnLabForCausalLM``; the default is the softmax maps):

- ``attention``: softmax attention maps (heads, queries, keys); rows sum to 1. GPT heads; DAT self-attention
  *and* relational heads (α); LSW over [registers; memory; tokens]; MoA the metric MHA probabilities.
- ``relations`` (DAT): r(x_i, x_j) per relation dimension ℓ as (d_r, T, T) heatmaps (future keys are null).
- ``symbols`` (DAT): the symbol each token retrieves: symbolic attention weights over the library
  (symbol heads, T, n_symbols; rows sum to 1), or the positional / relative index.
- ``importance`` (LEAP): α[i, l], the weight of token l in position i's windowed summary (rows sum to 1),
  plus the focus logits.
- ``routing`` (MoA): router weights over head types (T, 4; rows sum to 1), gates, FFN branch weights (T, 3),
  and ``balls``: per metric head the keys its ball prunes.

Plus ``next_token``: the top-k next-token distribution at every position (``position`` selects the default).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ConfigError
from .models.analysis_data import DIGITS, attention_entry, to_json


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """A readable label per token (byte tokens decode to their character; invalid UTF-8 pieces to \\xNN)."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i])
        if "\ufffd" in text or text == "":
            piece = tokenizer.convert_ids_to_tokens(i) or ""
            raw = [_BYTE_OF.get(c) for c in piece]
            text = "".join(f"\\x{b:02X}" for b in raw) if piece and None not in raw else (piece or f"<{i}>")
        labels.append(text)
    return labels


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte → printable-character map, to show partial UTF-8 byte tokens as \\xNN."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_OF = _byte_decoder()


def family_of(model) -> str:
    from .models.registry import family_of_config

    return family_of_config(model.config).name


def encode(tokenizer, prompt: str, *, max_tokens: int | None = None) -> torch.Tensor:
    """(1, T) ids of the prompt; a clear error when it is empty or longer than ``max_tokens``."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise ConfigError("the prompt encodes to no tokens")
    if max_tokens is not None and ids.shape[1] > max_tokens:
        raise ConfigError(f"the prompt is {ids.shape[1]} tokens long; the limit is {max_tokens} tokens")
    return ids


@contextmanager
def _hooks(pairs: list[tuple[torch.nn.Module, Any]]) -> Iterator[None]:
    """Register forward hooks (with kwargs) for the duration of a block."""
    handles = [m.register_forward_hook(fn, with_kwargs=True) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def analyze(model, tokenizer, prompt: str, *, position: int | None = None, top_k: int = 10,
            max_tokens: int | None = None) -> dict[str, Any]:
    """Everything the app shows for one prompt, as JSON-ready data (see the module docstring).

    ``position`` (default: the last token, negative counts from the end) selects ``next_token``; the top-k of
    every position is in ``next_token_all``. ``max_tokens`` rejects longer prompts with a ``ConfigError``.
    """
    model.eval()
    device = next(model.parameters()).device
    ids = encode(tokenizer, prompt, max_tokens=max_tokens)
    limit = model.config.block_size
    if model.config.pos == "learned" and ids.shape[1] > limit:
        raise ConfigError(f"the prompt is {ids.shape[1]} tokens; this model's context is {limit} tokens")
    T = ids.shape[1]
    pos = T - 1 if position is None else position
    if not -T <= pos < T:
        raise ConfigError(f"position {position} is outside the prompt (0..{T - 1})")
    pos %= T
    records: dict[str, Any] = {}
    with _hooks(model.analysis_probes(records)):
        out = model(ids.to(device), output_attentions=True, use_cache=False)
    ids_list = ids[0].tolist()
    tokens = token_labels(tokenizer, ids_list)
    probs = out.logits[0].float().softmax(-1)
    k = max(1, min(top_k, probs.shape[-1]))
    top = probs.topk(k, dim=-1)
    all_topk = [
        [{"id": int(i), "token": token_labels(tokenizer, [int(i)])[0], "prob": round(float(p), DIGITS)}
         for p, i in zip(top.values[t], top.indices[t])]
        for t in range(T)
    ]
    attentions = list(out.attentions or ())
    attentions += [None] * (model.config.n_layers - len(attentions))
    layers = model.analysis_layers(ids.to(device), attentions, records, tokens)
    return {
        "family": family_of(model),
        "model_type": model.config.model_type,
        "n_layers": model.config.n_layers,
        "n_heads": model.config.n_heads,
        "prompt": prompt,
        "ids": ids_list,
        "tokens": tokens,
        "position": pos,
        "top_k": k,
        "next_token": {"position": pos, "top": all_topk[pos]},
        "next_token_all": all_topk,
        "layers": layers,
    }


# --------------------------------------------------------------------------------------- export, generate
def export_json(analysis: dict[str, Any], path: str | Path) -> Path:
    """Write an ``analyze`` result as JSON (UTF-8) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(analysis, ensure_ascii=False), encoding="utf-8")
    return path


@torch.no_grad()
def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 40, greedy: bool = True,
             temperature: float = 0.8, top_k: int = 50, seed: int = 0, max_tokens: int | None = None) -> dict[str, str]:
    """A short continuation for the app: ``{"prompt", "continuation", "text"}``; the prompt is cut to the
    context of models with learned positions, so generation always fits."""
    if max_new_tokens <= 0:
        raise ConfigError("max_new_tokens must be positive")
    if not greedy and temperature <= 0:
        raise ConfigError("temperature must be > 0 (or use greedy decoding)")
    ids = encode(tokenizer, prompt, max_tokens=max_tokens)
    if model.config.pos == "learned":
        limit = model.config.block_size
        ids = ids[:, -max(1, limit - max_new_tokens):]
        max_new_tokens = min(max_new_tokens, limit - ids.shape[1])
    torch.manual_seed(seed)
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=top_k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = model.generate(ids.to(device), max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
    continuation = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return {"prompt": prompt, "continuation": continuation, "text": prompt + continuation}


__all__ = ["analyze", "attention_entry", "encode", "export_json", "generate", "to_json", "token_labels"]
