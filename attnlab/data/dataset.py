"""Tokenize a source once into a flat, memory-mapped token file, then split it deterministically.

The cache directory is named by the source and tokenizer fingerprints, so a second run on the same data
with the same tokenizer (or a resumed run with its saved tokenizer) opens the file instead of tokenizing.
A cache is trusted only when its ``meta.json`` reads, its token file has the size the meta gives and the
CRC-32 computed while it was written (about 5 GB/s to check again); a damaged cache is rebuilt, with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from transformers import PreTrainedTokenizerFast

from ..io import atomic_path, write_json
from ..paths import cache_dir
from .sources import iter_documents, source_fingerprint
from .split import TokenSplit, check_val_fraction, split_stream
from .tokenizer import build_tokenizer, encode_batch, token_byte_lengths, tokenizer_fingerprint

FORMAT = 1  # bump when the token file layout or the document joining changes: old caches are then ignored
_BATCH_DOCS = 1024
_BATCH_BYTES = 16 << 20

__all__ = ["PreparedData", "TokenSplit", "prepare_data"]


@dataclass
class PreparedData:
    """A tokenizer and the train/validation token splits of one source, ready for training."""

    tokenizer: PreTrainedTokenizerFast
    train: TokenSplit
    val: TokenSplit
    meta: dict[str, Any]
    directory: Path
    from_cache: bool
    byte_lengths: np.ndarray  # UTF-8 bytes per token id, for bits per byte


def prepare_data(
    source: str = "shakespeare",
    tokenizer: str | PreTrainedTokenizerFast = "byte",
    *,
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    text_field: str = "text",
    hf_config: str | None = None,
    hf_split: str = "train",
    streaming: bool = True,
    max_docs: int | None = None,
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> PreparedData:
    """Tokenize ``source`` (see ``iter_documents``) with ``tokenizer`` (see ``build_tokenizer``), or reuse
    the tokens cached under ``cache_root`` (default ``cache_dir()/tokens``) by an earlier call.

    Documents are joined by the tokenizer's eos id, or by the tokens of a blank line when it has none.
    Validation is the last ``val_fraction`` of the token stream and train the rest (see ``split_stream``).
    """
    check_val_fraction(val_fraction)
    options = {"text_field": text_field, "hf_config": hf_config, "hf_split": hf_split, "max_docs": max_docs}
    source_fp = source_fingerprint(source, **options)
    documents = functools.partial(iter_documents, source, streaming=streaming, **options)
    if isinstance(tokenizer, str):
        tok = build_tokenizer(tokenizer, documents, vocab_size=vocab_size, fingerprint=source_fp)
    else:
        tok = tokenizer
    separator = _separator(tok)
    tokenizer_fp = tokenizer_fingerprint(tok)
    key = hashlib.sha256(json.dumps([FORMAT, source_fp, tokenizer_fp, separator]).encode()).hexdigest()[:16]
    root = Path(cache_root) if cache_root is not None else cache_dir() / "tokens"
    directory = root / key

    meta, problem = _cached_meta(directory)
    if problem is not None:
        Console(stderr=True).print(f"[yellow]warning:[/] the token cache {escape(str(directory))} is damaged "
                                   f"({escape(problem)}); rebuilding it", highlight=False)
        (directory / "meta.json").unlink(missing_ok=True)
    from_cache = meta is not None
    if meta is None:
        stats = _write_tokens(documents(), tok, separator, directory / "tokens.bin", progress)
        meta = {
            "format": FORMAT,
            "source": source,
            "tokenizer": tokenizer if isinstance(tokenizer, str) else tok.name_or_path or type(tok).__name__,
            "vocab_size": len(tok),
            "separator": separator,
            "source_fingerprint": source_fp,
            "tokenizer_fingerprint": tokenizer_fp,
            **options,
            **stats,
        }
        write_json(directory / "meta.json", meta)  # written last: its presence marks a complete cache

    tokens = np.memmap(directory / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    byte_lengths = token_byte_lengths(tok)
    train, val = split_stream(tokens, val_fraction, byte_lengths)
    split_meta = {"val_fraction": val_fraction, "n_train_tokens": len(train), "n_val_tokens": len(val)}
    return PreparedData(tok, train, val, meta | split_meta, directory, from_cache, byte_lengths)


def _separator(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    if tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    return tokenizer.backend_tokenizer.encode("\n\n", add_special_tokens=False).ids


def _cached_meta(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(meta, None) for a complete, intact cache in ``directory``; (None, None) when there is none yet, or one of
    an older format; (None, what is wrong) when it is damaged. Either way without a meta it is rebuilt."""
    if not (directory / "meta.json").exists():
        return None, None
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if meta["format"] != FORMAT:
            return None, None
        expected = meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
        size = (directory / "tokens.bin").stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    if size != expected:
        return None, f"tokens.bin has {size:,} bytes, {expected:,} expected"
    if "crc32" in meta and _crc32(directory / "tokens.bin") != meta["crc32"]:
        return None, "tokens.bin differs from the checksum written with it"
    return meta, None


def _crc32(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def _write_tokens(
    documents: Iterable[str],
    tokenizer: PreTrainedTokenizerFast,
    separator: list[int],
    path: Path,
    progress: bool,
) -> dict[str, Any]:
    """Stream the documents' tokens into ``path`` (atomically) and return the counts for meta.json."""
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32)
    joint = np.asarray(separator, dtype=dtype).tobytes()
    n_documents = n_tokens = n_bytes = crc = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as out, _progress_bar(progress) as bar:
        task = bar.add_task("tokenizing", total=None, documents=0)
        for batch in _batches(documents):
            for ids in encode_batch(tokenizer, batch):
                if n_documents:
                    out.write(joint)
                    crc = zlib.crc32(joint, crc)
                    n_tokens += len(separator)
                data = np.asarray(ids, dtype=dtype).tobytes()
                out.write(data)
                crc = zlib.crc32(data, crc)
                n_tokens += len(ids)
                n_documents += 1
            batch_bytes = sum(len(text.encode("utf-8")) for text in batch)
            n_bytes += batch_bytes
            bar.update(task, advance=batch_bytes, documents=n_documents)
    return {"n_documents": n_documents, "n_tokens": n_tokens, "n_bytes": n_bytes, "dtype": dtype.name, "crc32": crc}


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    """Groups of documents large enough to keep the Rust tokenizer's threads busy, small enough for RAM."""
    batch: list[str] = []
    size = 0
    for text in documents:
        batch.append(text)
        size += len(text)
        if len(batch) == _BATCH_DOCS or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        TextColumn("{task.fields[documents]:,} docs"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )
