"""The Python API that mirrors the command line: train, evaluate, generate, info."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError


def train(config=None, **options):
    """``attnlab train``: ``train(preset="tiny", max_steps=500)`` or ``train(TrainConfig(...))``."""
    from .training import TrainConfig
    from .training import train as run_training

    if config is not None and options:
        raise ConfigError("pass either a TrainConfig or keyword options, not both")
    return run_training(config or TrainConfig(**options))


def evaluate(
    run: str | Path,
    data: str | None = None,
    *,
    split: str = "val",
    val_fraction: float | None = None,
    text_field: str | None = None,
    hf_config: str | None = None,
    hf_split: str | None = None,
    max_docs: int | None = None,
    block_size: int | None = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    full: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    memory: bool | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``attnlab eval``: loss, perplexity and bits per byte of a saved model on a split of ``data``.

    What is not given (None) comes from the run's ``train_config.json``: its data and how it read them, its
    validation fraction, block and batch size, dtype, segment streaming (``memory``) and validation budget
    (``max_tokens``: its ``eval_tokens``), so a run scored with nothing given repeats its last validation.
    ``full=True`` scores the whole split. A model folder without ``train_config.json`` needs ``data``; it is
    then scored whole, with the defaults of ``attnlab train``.

    ``memory=True`` evaluates a Transformer-XL model (lsw) the way segment streaming trains it: contiguous
    streams of consecutive ``block_size`` segments, memory carried over (see ``evaluation.evaluate``).
    The metrics come with what was scored: ``data``, ``split`` and ``split_tokens`` (the split's targets).
    """
    from . import load, load_tokenizer
    from .data import prepare_data
    from .evaluation import evaluate as evaluate_model
    from .evaluation import run_eval_settings

    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    if full and max_tokens is not None:
        raise ConfigError("give either a token budget (max_tokens) or full=True, not both")
    torch_device = _device(device)
    model = load(run, device=str(torch_device))  # first: a wrong path is reported as such
    settings = run_eval_settings(run, data, val_fraction=val_fraction, text_field=text_field, hf_config=hf_config,
                                 hf_split=hf_split, max_docs=max_docs, block_size=block_size, batch_size=batch_size,
                                 eval_tokens=max_tokens, dtype=dtype, segment_stream=memory)
    prepared = prepare_data(settings.data, load_tokenizer(run), val_fraction=settings.val_fraction,
                            text_field=settings.text_field, hf_config=settings.hf_config, hf_split=settings.hf_split,
                            max_docs=settings.max_docs, progress=progress)
    scored = getattr(prepared, split)
    metrics = evaluate_model(
        model,
        scored,
        byte_lengths=prepared.byte_lengths,
        batch_size=settings.batch_size,
        block_size=settings.block_size or model.config.block_size,
        max_tokens=None if full else settings.eval_tokens,
        device=torch_device,
        dtype=settings.dtype,
        memory=settings.segment_stream,
        eos_token_id=prepared.tokenizer.eos_token_id,
        progress=progress,
    )
    return {**metrics, "data": settings.data, "split": split, "split_tokens": scored.n_targets()}


def generate(
    run: str | Path,
    prompt: str = "\n",
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    device: str = "auto",
    stream: bool = False,
) -> str:
    """``attnlab generate``: the prompt and its continuation as text (printed as it comes when ``stream``)."""
    return generate_batch(run, [prompt], max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, greedy=greedy, seed=seed, device=device, stream=stream)[0]


def generate_batch(
    run: str | Path,
    prompts: list[str],
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 8,
    stream: bool = False,
) -> list[str]:
    """Each prompt and its continuation, generated ``batch_size`` prompts at a time (left-padded: a prompt's
    greedy continuation is the same alone or in a batch). Generation stops at the tokenizer's end of text."""
    from transformers import TextStreamer

    from . import load, load_tokenizer

    if max_new_tokens <= 0:
        raise ConfigError("max_new_tokens must be positive")
    if temperature <= 0 and not greedy:
        raise ConfigError("temperature must be > 0 (or use greedy decoding)")
    if not prompts:
        raise ConfigError("no prompt given")
    if batch_size <= 0:
        raise ConfigError("batch_size must be positive")
    torch_device = _device(device)
    model, tok = load(run, device=str(torch_device)), load_tokenizer(run)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if tok.pad_token is None:
        batch_size = 1  # nothing to pad with (a 256-id byte tokenizer of earlier releases): one at a time
    tok.padding_side = "left"
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=top_k,
                                                         top_p=top_p)
    torch.manual_seed(seed)
    texts = []
    for first in range(0, len(prompts), batch_size):
        batch = tok(prompts[first:first + batch_size], return_tensors="pt", padding=tok.pad_token is not None)
        ids, mask = batch.input_ids, batch.attention_mask
        if ids.shape[1] == 0 or bool((mask.sum(-1) == 0).any()):
            raise ConfigError("a prompt encodes to no tokens")
        ids, mask, new = _fit_context(model.config, ids, mask, max_new_tokens)
        out = model.generate(
            ids.to(torch_device), attention_mask=mask.to(torch_device), max_new_tokens=new,
            streamer=TextStreamer(tok, skip_special_tokens=True) if stream and len(prompts) == 1 else None,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **sampling,
        )
        for row in range(out.shape[0]):
            prompt_ids = ids[row][mask[row].bool()].tolist()
            texts.append(tok.decode(prompt_ids + out[row, ids.shape[1]:].tolist(), skip_special_tokens=True))
    return texts


def _fit_context(
    config, ids: torch.Tensor, mask: torch.Tensor, new: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Learned positions end at block_size: cut the (left-padded) prompts and the output to fit, and say so."""
    if config.pos != "learned":
        return ids, mask, new
    limit = config.block_size
    if ids.shape[1] >= limit:
        ids, mask = ids[:, -(limit // 2):], mask[:, -(limit // 2):]
        print(f"note: prompt cut to its last {ids.shape[1]} tokens (block_size {limit})", file=sys.stderr)
    if ids.shape[1] + new > limit:
        new = limit - ids.shape[1]
        print(f"note: generating {new} tokens, the most that fit in block_size {limit}", file=sys.stderr)
    return ids, mask, new


def info(run: str | Path | None = None, model: str = "gpt", preset: str = "tiny", **overrides) -> dict[str, Any]:
    """``attnlab info``: parameter counts (total, without embeddings, per component) and the config."""
    from .summary import describe

    return describe(None if run is None else str(run), model, preset, overrides)


def _device(name: str) -> torch.device:
    from .training.distributed import DistInfo, pick_device

    return pick_device(name, DistInfo())
