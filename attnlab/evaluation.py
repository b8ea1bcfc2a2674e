"""Validation metrics that compare across tokenizers: loss, perplexity and bits per byte."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.metrics import bits_per_byte, perplexity
from .errors import ConfigError

# the options of a training run that decide what its validation scored, as TrainConfig names them
SOURCE_OPTIONS = ("text_field", "hf_config", "hf_split", "max_docs")


@dataclasses.dataclass
class EvalSettings:
    """What ``attnlab eval`` scores and how: the data source as ``prepare_data`` reads it, then the split and
    the batches as ``evaluate`` reads them. Field names are ``TrainConfig``'s, so a run's own fill them."""

    data: str
    text_field: str = "text"
    hf_config: str | None = None
    hf_split: str = "train"
    max_docs: int | None = None
    val_fraction: float = 0.1
    block_size: int | None = None
    batch_size: int = 8
    eval_tokens: int | None = None
    dtype: str = "float32"
    segment_stream: bool = False


def saved_train_options(run: str | Path) -> dict[str, Any]:
    """The options a run directory was trained with (its ``train_config.json``); empty for a bare model folder."""
    from .loading import read_run_file

    return read_run_file(run, "train_config.json") if (Path(run) / "train_config.json").exists() else {}


def run_eval_settings(run: str | Path, data: str | None = None, **given: Any) -> EvalSettings:
    """The settings given (None: not given), else the run's, else the defaults; so scoring a run with nothing
    given repeats its last validation: same data, split, windows, batches, dtype and token budget.

    The run's source options (text field, HF config and split, max_docs) apply only while scoring its own data.
    """
    saved = saved_train_options(run)
    if data is None and not saved:
        raise ConfigError(f"{run} has no train_config.json to take the data from: give the data to score (--data)")
    own_source = data is None or data == saved.get("data")
    names = {f.name for f in dataclasses.fields(EvalSettings)} - {"data"}
    if not own_source:
        names -= set(SOURCE_OPTIONS)
    values = {name: saved[name] for name in names if name in saved}
    values.update({name: value for name, value in given.items() if value is not None})
    return EvalSettings(data=data or saved["data"], **values)


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
    progress: bool = False,
) -> dict[str, float]:
    """Every target of ``split`` (up to ``max_tokens``) predicted once with ``block_size`` context windows.

    bits per byte = Σ NLL (nats) / (ln 2 · Σ UTF-8 bytes of the target tokens), so a byte-level and a BPE
    model of the same text are on one scale.

    ``memory=True`` (Transformer-XL models, as trained with segment streaming) reads the split as
    contiguous streams of consecutive segments and carries the model's memory from one to the next, reset
    at ``eos_token_id`` document boundaries, so each segment also sees the text before it.

    ``progress`` shows a bar on stderr (a full split can take minutes); training validates inside its own bar.
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
    for x, y, docs in _with_progress(batches, split.n_targets(max_tokens), progress):
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


def _with_progress(batches: Iterable[tuple], total: int, enabled: bool) -> Iterator[tuple]:
    """The batches, advancing a bar like training's by the targets each one scores."""
    if not enabled:
        yield from batches
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold blue]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("eval", total=total)
        for batch in batches:
            yield batch
            bar.advance(task, batch[1].numel())
