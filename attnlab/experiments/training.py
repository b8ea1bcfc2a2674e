"""The small training loop the classification and sequence-to-sequence experiments share, and their metrics.

Why not ``attnlab.training``: that trainer is built around causal LMs on token streams (checkpoints, token
budgets, DDP); an experiment run trains a few-hundred-thousand-parameter model on in-memory tensors for a few
hundred steps, many times over, and must be deterministic per seed and cheap to start. So: AdamW, linear warmup
then cosine (or a constant rate, as the paper's scripts), minibatches drawn from index permutations of
tensors (every example once per epoch), evaluation in ``no_grad``, and a ``progress`` callback for the runner's
bar. Greedy decoding goes through ``model.generate`` (cached); the metrics are pure functions of predictions
and labels so the tests can check them by hand.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainSettings:
    """One run's optimisation budget: ``steps`` AdamW steps of ``batch_size`` examples at peak rate ``lr``."""

    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio
    grad_clip: float = 0.0  # 0: no clipping
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def learning_rate(step: int, settings: TrainSettings) -> float:
    """The rate of (0-based) ``step``: linear warmup to ``lr``, then constant or cosine down to the floor."""
    s = settings
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    span = max(1, s.steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    floor = s.lr * s.min_lr_ratio
    return floor + (s.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_seed(seed: int) -> None:
    """Seed every generator a run draws from, so the same seed gives the same run on one machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatch indices: successive random permutations of ``range(n)`` cut into batches of
    ``min(batch_size, n)``; a batch that crosses an epoch boundary continues with the next permutation, so every
    example is seen once per epoch and none is dropped (tiny training sets matter in data-efficiency curves)."""
    if n < 1:
        raise ConfigError("cannot train on an empty training set")
    size = min(batch_size, n)
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:size]
        buffer = buffer[size:]


def steps_for_epochs(epochs: float, n: int, batch_size: int, min_steps: int = 1) -> int:
    """Optimizer steps of ``epochs`` passes over ``n`` examples (at least ``min_steps``)."""
    return max(min_steps, math.ceil(epochs * n / min(batch_size, n)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms and embeddings' 1-d parameters keep their scale (the usual AdamW)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    keep = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def train(
    model: nn.Module,
    loss_of_batch: Callable[[torch.Tensor], torch.Tensor],
    n_examples: int,
    settings: TrainSettings,
    *,
    seed: int,
    progress: Callable[[float], None] | None = None,
    evaluate: Callable[[int], None] | None = None,
    eval_steps: tuple[int, ...] | list[int] = (),
) -> float:
    """Train ``model`` for ``settings.steps`` steps; ``loss_of_batch(indices)`` returns the loss of those
    training examples. ``evaluate(step)`` runs after each step in ``eval_steps`` (the model in eval mode, then
    back to train mode). Returns the mean training loss of the last tenth of the steps."""
    s = settings
    optimizer = torch.optim.AdamW(_param_groups(model, s.weight_decay), lr=s.lr, betas=s.betas)
    generator = torch.Generator().manual_seed(seed)
    batches = epoch_batches(n_examples, s.batch_size, generator)
    wanted = set(eval_steps)
    tail = max(1, s.steps // 10)
    losses: list[float] = []
    model.train()
    for step in range(s.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, s)
        loss = loss_of_batch(next(batches))
        if not torch.isfinite(loss):
            raise ConfigError(f"the training loss is {loss.item()} at step {step}: lower the learning rate")
        loss.backward()
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= s.steps - tail:
            losses.append(loss.item())
        if evaluate is not None and step + 1 in wanted:
            model.eval()
            evaluate(step + 1)
            model.train()
        if progress is not None:
            progress((step + 1) / s.steps)
    model.eval()
    return sum(losses) / len(losses)


# ------------------------------------------------------------------------------------------ metrics
def token_accuracy(predictions: torch.Tensor, labels: torch.Tensor, pad_id: int) -> tuple[int, int]:
    """(correct, counted) target tokens: positions where ``labels`` is padding are not counted. ``predictions``
    may be shorter or longer than ``labels`` (a shorter one is wrong at the missing positions)."""
    predictions = _fit(predictions, labels.shape[1], pad_id)
    counted = labels != pad_id
    return int(((predictions == labels) & counted).sum()), int(counted.sum())


def exact_matches(predictions: torch.Tensor, labels: torch.Tensor, pad_id: int) -> int:
    """Rows whose every non-padding label token is predicted right (the whole answer, its end token included;
    what follows the end is not read)."""
    predictions = _fit(predictions, labels.shape[1], pad_id)
    wrong = (predictions != labels) & (labels != pad_id)
    return int((~wrong.any(dim=1)).sum())


def _fit(predictions: torch.Tensor, width: int, pad_id: int) -> torch.Tensor:
    if predictions.shape[1] >= width:
        return predictions[:, :width]
    return torch.nn.functional.pad(predictions, (0, width - predictions.shape[1]), value=pad_id)


@torch.no_grad()
def classification_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            batch_size: int = 500) -> float:
    """Top-1 accuracy of an image classifier (eval mode, no gradients), in batches."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(pixel_values=images[start:start + batch_size].to(device)).logits
        correct += int((logits.argmax(-1).cpu() == labels[start:start + batch_size]).sum())
    return correct / max(1, len(labels))


@dataclass(frozen=True)
class Seq2SeqData:
    """Encoded problems: ``source`` (n, S) and ``labels`` (n, T), both right-padded with ``pad_id``; labels end
    with the end token. ``source_lengths``/``label_lengths`` let a batch be cut to its longest row."""

    source: torch.Tensor
    labels: torch.Tensor
    pad_id: int

    @property
    def source_lengths(self) -> torch.Tensor:
        return (self.source != self.pad_id).sum(dim=1)

    @property
    def label_lengths(self) -> torch.Tensor:
        return (self.labels != self.pad_id).sum(dim=1)

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, index: torch.Tensor, source_lengths: torch.Tensor | None = None,
              label_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source ids, source mask, labels) of ``index``, cut to the batch's longest source and label."""
        src_len = (self.source_lengths if source_lengths is None else source_lengths)[index].max()
        lab_len = (self.label_lengths if label_lengths is None else label_lengths)[index].max()
        source = self.source[index, : int(src_len)]
        return source, source != self.pad_id, self.labels[index, : int(lab_len)]


def seq2seq_loss(model: nn.Module, data: Seq2SeqData, index: torch.Tensor,
                 lengths: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Teacher-forced cross-entropy of a batch (padding ignored); decoder inputs are the labels shifted right
    behind the start token, which the model derives."""
    device = next(model.parameters()).device
    source, mask, labels = data.batch(index, *(lengths or (None, None)))
    labels = labels.masked_fill(labels == data.pad_id, -100)
    return model(input_ids=source.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss


@torch.no_grad()
def teacher_forcing_accuracy(model: nn.Module, data: Seq2SeqData, batch_size: int = 500) -> float:
    """Per-character accuracy with the true previous characters fed in: argmax at each target position
    against the label, padding not counted (the end token is, as in the paper's scripts)."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        source, mask, labels = data.batch(index)
        decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels.masked_fill(labels == data.pad_id, -100))
        logits = model(input_ids=source.to(device), attention_mask=mask.to(device),
                       decoder_input_ids=decoder_inputs.to(device), use_cache=False).logits
        c, t = token_accuracy(logits.argmax(-1).cpu(), labels, data.pad_id)
        correct, total = correct + c, total + t
    return correct / max(1, total)


@torch.no_grad()
def greedy_decode(model: nn.Module, source: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy answers (n, ≤ max_new_tokens) from ``model.generate`` with its cache, the start token removed;
    rows that ended early are padded with the pad id after their end token."""
    device = next(model.parameters()).device
    config = model.config
    out = model.generate(input_ids=source.to(device), attention_mask=mask.to(device), do_sample=False, num_beams=1,
                         max_new_tokens=max_new_tokens, use_cache=True,
                         decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id)
    return out[:, 1:].cpu()


@torch.no_grad()
def greedy_exact_match(model: nn.Module, data: Seq2SeqData, batch_size: int = 500) -> float:
    """Share of problems whose greedily decoded answer is exactly right (every character and the end token)."""
    model.eval()
    right = 0
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        source, mask, labels = data.batch(index)
        right += exact_matches(greedy_decode(model, source, mask, labels.shape[1]), labels, data.pad_id)
    return right / max(1, len(data))


def device_of(name: str) -> torch.device:
    """``auto``: a GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: {exc}") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_image_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    *,
    seed: int,
    tests: dict[str, tuple[torch.Tensor, torch.Tensor]],
    progress: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """Train on (images, labels) with cross-entropy, then the top-1 accuracy on each test set (the metric
    ``accuracy`` for ``tests["test"]``, ``accuracy_<name>`` for the others) and the final training loss."""
    device = next(model.parameters()).device

    def loss_of_batch(index: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=images[index].to(device), labels=labels[index].to(device)).loss

    train_loss = train(model, loss_of_batch, len(labels), settings, seed=seed, progress=progress)
    final = {}
    for name, (x, y) in tests.items():
        key = "accuracy" if name == "test" else f"accuracy_{name.removeprefix('test_')}"
        final[key] = classification_accuracy(model, x, y, settings.eval_batch_size)
    final["train_loss"] = train_loss
    return final
