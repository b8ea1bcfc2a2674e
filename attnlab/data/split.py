"""Train/validation splits of a token stream and the two ways training reads them.

Training batches are a pure function of (seed, step), so the only "data position" a checkpoint needs is
its step number: a run resumed at step k reads exactly the batches an uninterrupted run would have read.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import ConfigError, DataError

_CHUNK = 1 << 24  # tokens per pass when summing bytes, to bound memory on huge token files


class TokenSplit:
    """A contiguous, read-only stretch of the token stream (typically a slice of a ``np.memmap``)."""

    def __init__(self, tokens: np.ndarray, byte_lengths: np.ndarray):
        self.tokens = tokens
        self.byte_lengths = byte_lengths
        self._eos_cache: dict = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenSplit({len(self):,} tokens)"

    @functools.cached_property
    def n_bytes(self) -> int:
        """UTF-8 bytes that the split's tokens stand for (exact for ByteLevel tokenizers)."""
        return sum(
            int(self.byte_lengths[self.tokens[start : start + _CHUNK]].sum())
            for start in range(0, len(self), _CHUNK)
        )

    def batch(
        self, step: int, batch_size: int, block_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows: x = tokens[i : i+block], y = tokens[i+1 : i+block+1] (int64).

        The start offsets come from a fresh generator seeded from (seed, step) alone, so equal arguments
        always give equal batches and no hidden sampler state has to be checkpointed.
        """
        _check_positive(batch_size=batch_size, block_size=block_size)
        if len(self) < block_size + 1:
            raise DataError(
                f"a split of {len(self):,} tokens cannot hold one window of block_size {block_size} (+1 target); "
                "lower block_size or use more data"
            )
        generator = torch.Generator().manual_seed(_batch_seed(seed, step))
        starts = torch.randint(0, len(self) - block_size, (batch_size,), generator=generator)
        return self._windows(starts.numpy(), block_size)

    def stream_batch(
        self, step: int, batch_size: int, block_size: int, eos_id: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Consecutive segments for Transformer-XL training: row r continues its own stream at every step.

        The split is cut into W = (len - 1) // block_size windows; row r reads window (r·W // batch_size + step)
        mod W, so its next step reads the tokens right after this one, and the position is a pure function of
        the step. Returns x, y and document ids (batch, block): the number of ``eos_id`` tokens before each
        token, made unique per pass over the split, so memory never crosses a document boundary or a wrap.
        """
        _check_positive(batch_size=batch_size, block_size=block_size)
        n_windows = (len(self) - 1) // block_size
        if n_windows < 1:
            raise DataError(f"a split of {len(self):,} tokens cannot hold one segment of {block_size} (+1 target)")
        passes, windows = np.divmod(np.arange(batch_size) * n_windows // batch_size + step, n_windows)
        starts = windows * block_size
        x, y = self._windows(starts, block_size)
        return x, y, self._document_ids(starts, block_size, eos_id, passes)

    def _document_ids(
        self, starts: np.ndarray, length: int, eos_id: int | None, passes: np.ndarray | int = 0
    ) -> torch.Tensor:
        """(rows, length): eos tokens before each position, offset per pass over the split (unique per document)."""
        boundaries = self._eos_positions(eos_id)
        docs = np.searchsorted(boundaries, starts[:, None] + np.arange(length))
        docs = docs + np.reshape(passes, (-1, 1)) * (len(boundaries) + 1)
        return torch.from_numpy(docs.astype(np.int64))

    def _eos_positions(self, eos_id: int | None) -> np.ndarray:
        if eos_id is None:
            return np.empty(0, dtype=np.int64)
        if self._eos_cache.get("id") != eos_id:
            self._eos_cache = {"id": eos_id, "positions": np.flatnonzero(np.asarray(self.tokens) == eos_id)}
        return self._eos_cache["positions"]

    def eval_batches(
        self, batch_size: int, block_size: int, max_tokens: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows from the start of the split, in order, each target predicted exactly once.

        Covers the first ``max_tokens`` targets (all ``len - 1`` when None). Full windows come in batches of
        ``batch_size`` rows (the last batch may have fewer); targets left over after the last full window
        come as one final ``(1, rest)`` batch.
        """
        _check_positive(batch_size=batch_size, block_size=block_size)
        n_targets = self.n_targets(max_tokens)
        n_full = n_targets // block_size
        for first in range(0, n_full, batch_size):
            starts = np.arange(first, min(first + batch_size, n_full)) * block_size
            yield self._windows(starts, block_size)
        if rest := n_targets - n_full * block_size:
            yield self._windows(np.array([n_full * block_size]), rest)

    def eval_streams(
        self, batch_size: int, block_size: int, max_tokens: int | None = None, eos_id: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each target once, read as ``batch_size`` contiguous streams of consecutive segments (for XL memory).

        The first ``max_tokens`` targets (all when None) are cut into ``batch_size`` equal streams; batch k
        holds segment k of every stream, so a model carrying memory from batch to batch sees, per row, the
        text right before each segment. The < ``batch_size`` targets left over come last as one (1, rest)
        batch, which starts a stream of its own. Yields x, y and document ids (see ``stream_batch``).
        """
        _check_positive(batch_size=batch_size, block_size=block_size)
        n_targets = self.n_targets(max_tokens)
        stream = n_targets // batch_size
        for offset in range(0, stream, block_size):
            length = min(block_size, stream - offset)
            starts = np.arange(batch_size) * stream + offset
            yield *self._windows(starts, length), self._document_ids(starts, length, eos_id)
        if rest := n_targets - stream * batch_size:
            starts = np.array([stream * batch_size])
            yield *self._windows(starts, rest), self._document_ids(starts, rest, eos_id)

    def n_targets(self, max_tokens: int | None = None) -> int:
        """How many next-token targets an evaluation covers: all ``len - 1``, or the first ``max_tokens``."""
        n_targets = max(len(self) - 1, 0)
        if max_tokens is not None:
            _check_positive(max_tokens=max_tokens)
            n_targets = min(n_targets, max_tokens)
        return n_targets

    def _windows(self, starts: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(
            np.asarray(self.tokens[starts[:, None] + np.arange(length + 1)], dtype=np.int64)
        )
        return rows[:, :-1], rows[:, 1:]


def split_stream(
    tokens: np.ndarray, val_fraction: float, byte_lengths: np.ndarray
) -> tuple[TokenSplit, TokenSplit]:
    """Train = the head of the stream, validation = its last ``val_fraction`` (as in nanoGPT).

    A contiguous tail leaves at most one document straddling the cut, and it does not depend on any seed,
    so the validation numbers of different runs on the same data are comparable.
    """
    check_val_fraction(val_fraction)
    n_val = int(len(tokens) * val_fraction)
    n_train = len(tokens) - n_val
    if min(n_train, n_val) < 2:
        raise DataError(
            f"only {len(tokens):,} tokens: too few for a train/validation split at val_fraction {val_fraction} "
            "(each side needs 2); use more data"
        )
    return TokenSplit(tokens[:n_train], byte_lengths), TokenSplit(tokens[n_train:], byte_lengths)


def check_val_fraction(val_fraction: float) -> None:
    """Fail before any tokenizing: a split outside (0, 0.5] leaves too little to train or to validate on."""
    if not 0 < val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5], got {val_fraction}")


def _batch_seed(seed: int, step: int) -> int:
    """A 64-bit seed that depends on (seed, step) only and differs for neighbouring steps and seeds."""
    digest = hashlib.sha256(f"attnlab-batch:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
