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

Every result has ``kind``: ``causal_lm`` (above), ``seq2seq`` or ``image``. Models that are not causal LMs say which
they are (``analysis_kind``) and have their own entry point; ``analysis_kind(model)`` finds it (``ANALYSIS_KINDS``).

``analyze_seq2seq(model, tokenizer, source, target)`` (DAT's sequence-to-sequence model) reads a source and a
target prefix (the decoder's start token, then ``target``; empty by default) and returns ``source_tokens``,
``target_tokens`` and:

- ``encoder_layers``: per layer ``attention`` (heads, source, source) — the self-attention heads ``SA h``, then the
  relational heads' α ``RA h`` —, ``relations`` (d_r, source, source) and ``symbols``, as above but not causal;
- ``decoder_layers``: the same over the target prefix (causal: future relations are null), plus
  ``cross_attention`` (cross heads, target, source), rows summing to 1;
- ``next_token`` / ``next_token_all``: the top-k of the token after each target position.

Padding of the source (a tokenizer's ``attention_mask``, or ``config.pad_token_id`` in a source given as ids) is
masked in the forward and dropped from every map and label.

``analyze_image(model, image)`` (the vision DAT) takes a PIL image, a numpy array or a tensor, puts it through the
model's image processor and returns ``tokens`` (``cls``, ``p(row,col)``...), ``image`` (what the model saw:
``pixels`` (height, width, channels) in 0..255 after undoing the normalisation), ``grid`` (patch rows, columns),
``prediction`` (the top-k classes: ``id``, ``label`` from ``config.id2label``, ``prob``) and per layer
``attention`` (heads, tokens, tokens), ``relations``, ``symbols``, and ``patch_attention`` / ``patch_relations``:
the pooled query's (CLS, or the mean over tokens: ``config.pooling``) weights over the patches as
(heads, rows, columns) maps on the patch grid, with ``mean`` over the heads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    """The family (causal LMs) or model kind (``dat-seq2seq``, ``dat-vision``) of a model."""
    from .models.registry import model_kind_of_config

    return model_kind_of_config(model.config).name


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
    _check_kind(model, "causal_lm")
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
    k, all_topk = _next_tokens(tokenizer, out.logits[0], top_k)
    attentions = list(out.attentions or ())
    attentions += [None] * (model.config.n_layers - len(attentions))
    layers = model.analysis_layers(ids.to(device), attentions, records, tokens)
    return {
        "kind": "causal_lm",
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


def _next_tokens(tokenizer, logits: torch.Tensor, top_k: int) -> tuple[int, list[list[dict[str, Any]]]]:
    """k and, for every position of (positions, vocab) logits, the top-k next tokens with their probabilities."""
    probs = logits.float().softmax(-1)
    k = max(1, min(top_k, probs.shape[-1]))
    top = probs.topk(k, dim=-1)
    return k, [
        [{"id": int(i), "token": token_labels(tokenizer, [int(i)])[0], "prob": round(float(p), DIGITS)}
         for p, i in zip(top.values[t], top.indices[t])]
        for t in range(probs.shape[0])
    ]


def _position(position: int | None, length: int, what: str) -> int:
    """A position counted from the start (negative: from the end), checked; the last by default."""
    pos = length - 1 if position is None else position
    if not -length <= pos < length:
        raise ConfigError(f"position {position} is outside the {what} (0..{length - 1})")
    return pos % length


# --------------------------------------------------------------------------------------- sequence to sequence
def _token_ids(tokenizer, value: str | Sequence[int] | torch.Tensor, what: str,
               add_special_tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids, attention mask or None) of a text or of token ids (1-D)."""
    if isinstance(value, str):
        encoded = tokenizer(value, add_special_tokens=add_special_tokens)
        ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
        mask = encoded.get("attention_mask")
        return ids, None if mask is None else torch.tensor(mask, dtype=torch.bool)
    try:
        ids = torch.as_tensor(value, dtype=torch.long).flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"the {what} must be a text or a sequence of token ids") from exc
    return ids, None


@torch.no_grad()
def analyze_seq2seq(model, tokenizer, source: str | Sequence[int] | torch.Tensor,
                    target: str | Sequence[int] | torch.Tensor = "", *, position: int | None = None, top_k: int = 10,
                    max_tokens: int | None = None) -> dict[str, Any]:
    """What the app shows of a sequence-to-sequence model for one source and target prefix (module docstring).

    ``source``: a text, or token ids in which ``config.pad_token_id`` marks padding (a row of a padded batch);
    ``target``: the prefix after the decoder's start token, a text (no special tokens added) or ids. ``position``
    (default: the last target position) selects ``next_token``; ``max_tokens`` limits source and target.
    """
    _check_kind(model, "seq2seq")
    model.eval()
    config = model.config
    if config.decoder_start_token_id is None:
        raise ConfigError("this model's config has no decoder_start_token_id: the decoder cannot start")
    device = next(model.parameters()).device
    src, mask = _token_ids(tokenizer, source, "source")
    if mask is None:  # ids (or a tokenizer without masks): padding is what holds the pad id
        pad = config.pad_token_id
        mask = src != pad if pad is not None and not isinstance(source, str) else torch.ones_like(src, dtype=torch.bool)
    n_source = int(mask.sum())
    if n_source == 0:
        raise ConfigError("the source encodes to no tokens")
    prefix, _ = _token_ids(tokenizer, target, "target", add_special_tokens=False)
    tgt = torch.cat([torch.tensor([config.decoder_start_token_id]), prefix])
    for what, n, block in (("source", n_source, config.source_block_size), ("target", len(tgt), config.block_size)):
        if max_tokens is not None and n > max_tokens:
            raise ConfigError(f"the {what} is {n} tokens long; the limit is {max_tokens} tokens")
        if config.pos == "learned" and n > block:
            raise ConfigError(f"the {what} is {n} tokens; this model's {what} context is {block} tokens")
    for what, ids, vocab in (("source", src[mask], config.source_vocab_size), ("target", tgt, config.vocab_size)):
        if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < vocab:
            raise ConfigError(f"the {what} has token ids outside the model's {what} vocabulary (0..{vocab - 1}): "
                              "the tokenizer is not this model's")
    pos = _position(position, len(tgt), "target prefix")
    records: dict[str, Any] = {}
    try:
        with _hooks(model.analysis_probes(records)):
            out = model(input_ids=src[None].to(device), attention_mask=mask[None].long().to(device),
                        decoder_input_ids=tgt[None].to(device), output_attentions=True, use_cache=False)
    except ValueError as exc:  # e.g. past the positions of a positional symbol library
        raise ConfigError(str(exc)) from exc
    source_ids, target_ids = src[mask].tolist(), tgt.tolist()
    source_tokens, target_tokens = token_labels(tokenizer, source_ids), token_labels(tokenizer, target_ids)
    k, all_topk = _next_tokens(tokenizer, out.logits[0], top_k)
    stacks = model.analysis_stacks(out, records, source_tokens, target_tokens, mask.to(device))
    return {
        "kind": "seq2seq",
        "family": family_of(model),
        "model_type": config.model_type,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "n_decoder_layers": config.decoder_layers,
        "source": source if isinstance(source, str) else tokenizer.decode(source_ids),
        "target": target if isinstance(target, str) else tokenizer.decode(prefix.tolist()),
        "source_ids": source_ids,
        "source_tokens": source_tokens,
        "target_ids": target_ids,
        "target_tokens": target_tokens,
        "position": pos,
        "top_k": k,
        "next_token": {"position": pos, "top": all_topk[pos]},
        "next_token_all": all_topk,
        **stacks,
    }


@torch.no_grad()
def generate_seq2seq(model, tokenizer, source: str, *, max_new_tokens: int = 40, greedy: bool = True,
                     temperature: float = 0.8, top_k: int = 50, seed: int = 0,
                     max_tokens: int | None = None) -> dict[str, str]:
    """A target for ``source`` (greedy by default): ``{"source", "target", "text"}`` (``text`` is the target, the
    decoder's start token left out); generation stops at the model's end token or its target context."""
    _check_kind(model, "seq2seq")
    if max_new_tokens <= 0:
        raise ConfigError("max_new_tokens must be positive")
    if not greedy and temperature <= 0:
        raise ConfigError("temperature must be > 0 (or use greedy decoding)")
    config = model.config
    if config.decoder_start_token_id is None:
        raise ConfigError("this model's config has no decoder_start_token_id: the decoder cannot start")
    ids = encode(tokenizer, source, max_tokens=max_tokens)
    if config.pos == "learned":
        if ids.shape[1] > config.source_block_size:
            raise ConfigError(f"the source is {ids.shape[1]} tokens; this model's source context is "
                              f"{config.source_block_size} tokens")
        max_new_tokens = min(max_new_tokens, config.block_size - 1)
    torch.manual_seed(seed)
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=top_k)
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    device = next(model.parameters()).device
    try:
        out = model.generate(input_ids=ids.to(device), max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    target = tokenizer.decode(out[0, 1:], skip_special_tokens=True)
    return {"source": source, "target": target, "text": target}


# --------------------------------------------------------------------------------------- images
def as_image(image: Any, channels: int):
    """A PIL image of ``channels`` (1: ``L``, 3: ``RGB``) from a PIL image, a numpy array or a torch tensor.

    Arrays are (H, W), (H, W, C) or (C, H, W) (C in 1, 3, 4; a batch of one is accepted): integers in 0..255,
    floats in [0, 1]. Grey becomes RGB by repetition, RGB grey by PIL's luminance, alpha is dropped.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert({1: "L", 3: "RGB"}[channels])
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ConfigError(f"an image must be a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    array = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first → last
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ConfigError(f"an image array must be (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; got shape "
                          f"{tuple(image.shape)}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ConfigError("a float image must hold values in [0, 1] (integers: 0..255)")
        array = np.rint(array * 255)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        array = array.astype(np.int64) * (255 if array.dtype == bool else 1)
        if array.min() < 0 or array.max() > 255:
            raise ConfigError("an integer image must hold values in 0..255")
    else:
        raise ConfigError(f"an image array must hold numbers, got {array.dtype}")
    array = array.astype(np.uint8)[..., :3]
    mode = "L" if array.shape[-1] == 1 else "RGB"
    return Image.fromarray(array[..., 0] if mode == "L" else array, mode).convert({1: "L", 3: "RGB"}[channels])


def _shown_pixels(pixel_values: torch.Tensor, processor) -> torch.Tensor:
    """(C, H, W) model input → (H, W, C) 0..255 integers: the processor's normalisation undone."""
    x = pixel_values.detach().double().cpu()
    if getattr(processor, "do_normalize", False):
        channels = x.shape[0]
        mean = torch.as_tensor(processor.image_mean, dtype=torch.float64).flatten().expand(channels)
        std = torch.as_tensor(processor.image_std, dtype=torch.float64).flatten().expand(channels)
        x = x * std[:, None, None] + mean[:, None, None]
    scale = getattr(processor, "rescale_factor", 1 / 255) if getattr(processor, "do_rescale", True) else 1 / 255
    return (x / (255 * scale)).clamp(0, 1).mul(255).round().to(torch.int64).permute(1, 2, 0)


def load_image_processor(model, path: str | Path | None = None):
    """The image processor saved beside a model (``preprocessor_config.json``), else the model's default one."""
    if path is not None and (Path(path) / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path)
    return model.default_image_processor()


@torch.no_grad()
def analyze_image(model, image: Any, *, processor=None, top_k: int = 5) -> dict[str, Any]:
    """What the app shows of an image classifier for one image (module docstring). ``processor``: the model's
    image processor (default: ``model.default_image_processor()``, sized for the model)."""
    _check_kind(model, "image")
    model.eval()
    config = model.config
    processor = processor if processor is not None else model.default_image_processor()
    picture = as_image(image, config.num_channels)
    pixel_values = processor(picture, return_tensors="pt")["pixel_values"]
    device = next(model.parameters()).device
    records: dict[str, Any] = {}
    with _hooks(model.analysis_probes(records)):
        out = model(pixel_values.to(device), output_attentions=True)
    probs = out.logits[0].float().softmax(-1)
    k = max(1, min(top_k, probs.shape[-1]))
    top = probs.topk(k)
    labels = getattr(config, "id2label", None) or {}
    classes = [{"id": int(i), "label": str(labels.get(int(i), labels.get(str(int(i)), f"LABEL_{int(i)}"))),
                "prob": round(float(p), DIGITS)} for p, i in zip(top.values, top.indices)]
    tokens = model.analysis_tokens()
    layers = model.analysis_layers(pixel_values.to(device), out.attentions, records, tokens)
    pixels = _shown_pixels(pixel_values[0], processor)
    return {
        "kind": "image",
        "family": family_of(model),
        "model_type": config.model_type,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "tokens": tokens,
        "grid": list(config.grid),
        "patch_size": config.patch_size,
        "pooling": config.pooling,
        "image": {"height": pixels.shape[0], "width": pixels.shape[1], "channels": pixels.shape[2],
                  "pixels": pixels.tolist()},
        "top_k": k,
        "prediction": {"id": classes[0]["id"], "label": classes[0]["label"], "top": classes},
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
    _check_kind(model, "causal_lm")
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


# --------------------------------------------------------------------------------------- kinds of models
@dataclass(frozen=True)
class AnalysisKind:
    """How one kind of model is analysed: its entry point, its generation (None: it generates nothing) and
    how the preprocessor saved beside it is loaded (``load_preprocessor(model, directory)``)."""

    name: str
    analyze: Callable[..., dict[str, Any]]
    generate: Callable[..., dict[str, str]] | None
    load_preprocessor: Callable[[Any, str | Path], Any]


def _load_tokenizer(model, path: str | Path):
    from .loading import load_tokenizer

    return load_tokenizer(path)


ANALYSIS_KINDS: dict[str, AnalysisKind] = {
    "causal_lm": AnalysisKind("causal_lm", analyze, generate, _load_tokenizer),
    "seq2seq": AnalysisKind("seq2seq", analyze_seq2seq, generate_seq2seq, _load_tokenizer),
    "image": AnalysisKind("image", analyze_image, None, load_image_processor),
}


def analysis_kind(model) -> AnalysisKind:
    """The kind a model (or model class) says it is (``analysis_kind``; causal LMs by default)."""
    name = getattr(model, "analysis_kind", "causal_lm")
    if name not in ANALYSIS_KINDS:
        raise ConfigError(f"{type(model).__name__} is a model of analysis kind {name!r}, which attnlab.analysis "
                          f"does not know (known: {', '.join(ANALYSIS_KINDS)})")
    return ANALYSIS_KINDS[name]


def _check_kind(model, expected: str) -> None:
    """A clear error when a model goes to another kind's entry point."""
    kind = analysis_kind(model)
    if kind.name != expected:
        raise ConfigError(f"{type(model).__name__} is a {kind.name} model: analyse it with "
                          f"attnlab.analysis.{kind.analyze.__name__}")


__all__ = ["ANALYSIS_KINDS", "AnalysisKind", "analysis_kind", "analyze", "analyze_image", "analyze_seq2seq",
           "as_image", "attention_entry", "encode", "export_json", "generate", "generate_seq2seq",
           "load_image_processor", "to_json", "token_labels"]
