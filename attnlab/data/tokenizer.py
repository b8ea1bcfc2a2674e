"""Tokenizers, all as Hugging Face fast tokenizers, so every run saves its own with ``save_pretrained``.

``"byte"`` is the 256 byte values plus ``<|endoftext|>`` (no training, nothing unknown, ever); ``"bpe"`` is
byte-level BPE trained on the run's data and cached; anything else is a pretrained tokenizer name or a
directory saved earlier. attnlab's own tokenizers use ``<|endoftext|>`` as eos (the document separator, where
generation stops), pad and bos (the prefix token evaluation harnesses ask for), as GPT-2's does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import ConfigError, DataError
from ..paths import cache_dir

EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map; ByteLevel tokenizers spell their tokens in it."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in visible]
    return {b: chr(b) for b in visible} | {b: chr(256 + n) for n, b in enumerate(hidden)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def build_tokenizer(
    spec: str,
    documents: Callable[[], Iterable[str]] | None = None,
    *,
    vocab_size: int = 4096,
    fingerprint: str | None = None,
) -> PreTrainedTokenizerFast:
    """The tokenizer named by ``spec``: ``"byte"``, ``"bpe"`` or a pretrained name / saved directory.

    Only ``"bpe"`` reads ``documents`` (called once, and only when training); with a corpus ``fingerprint``
    the trained tokenizer is cached under ``cache_dir()/tokenizers/`` by (fingerprint, vocab_size).
    """
    if spec == "byte":
        return byte_tokenizer()
    if spec == "bpe":
        if documents is None:
            raise ConfigError("the bpe tokenizer is trained on the data, so it needs documents")
        return _cached_bpe(documents, vocab_size, fingerprint)
    return load_pretrained(spec)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """257 ids: id == byte value for the 256 bytes, then ``<|endoftext|>`` (id 256, 0 bytes of text).

    Runs saved before the special token existed keep their own 256-id tokenizer in the run directory, and
    load, evaluate and generate with it as before.
    """
    backend = Tokenizer(models.BPE(vocab={char: byte for byte, char in BYTE_TO_CHAR.items()}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS])
    return _with_special_tokens(backend)


def _with_special_tokens(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """The HF tokenizer around ``backend``, ``<|endoftext|>`` as eos, pad and bos (never added by encoding);
    padding on the left, where batched generation of a causal LM needs it."""
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   padding_side="left")


def train_bpe(documents: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE: every byte is in the alphabet, so any text encodes without unknowns.

    ``<|endoftext|>`` (id 0) is the only special token and serves as eos (the document separator), pad and
    bos; training windows are never padded, so sharing the id costs nothing.
    """
    smallest = len(BYTE_TO_CHAR) + 1
    if vocab_size < smallest:
        raise ConfigError(f"bpe vocab_size must be at least {smallest} (256 bytes + {EOS}), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer)
    return _with_special_tokens(backend)


def load_pretrained(spec: str) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained(spec)``, with every failure turned into one actionable line."""
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise DataError(f"no such tokenizer directory: {spec}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec)
    except Exception as exc:  # OSError, ValueError, hub errors... all mean "cannot use this spec"
        lines = str(exc).strip().splitlines()
        raise DataError(
            f"could not load tokenizer '{spec}' ({type(exc).__name__}: {lines[0][:200] if lines else ''}); "
            "use 'byte', 'bpe', a Hugging Face tokenizer name (needs the network once) or a saved directory"
        ) from exc
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise DataError(f"tokenizer '{spec}' has no fast (tokenizers-backed) version; pick another one")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batched generation and pipelines need one (GPT-2 has none)
    return tokenizer


def encode_batch(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Token ids of raw documents: no special tokens added, and none recognised inside the text.

    A document that happens to contain ``<|endoftext|>`` is text, not a document boundary; encoding it as
    text also keeps the byte counts of ``token_byte_lengths`` exact.
    """
    backend = tokenizer.backend_tokenizer
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """UTF-8 bytes each id stands for (int64, indexed by id), so bits per byte compares across tokenizers.

    Exact for ByteLevel tokenizers (byte, bpe, GPT-2 style): every character of a vocabulary token is one
    byte through the inverse ``bytes_to_unicode`` table. Otherwise approximate: the bytes of
    ``decode([id])``, which e.g. drops SentencePiece's leading space. Special tokens count 0 bytes.
    """
    n = len(tokenizer)
    added = {i: token for i, token in tokenizer.added_tokens_decoder.items() if i < n}
    ids = [i for i in range(n) if i not in added]
    tokens = tokenizer.convert_ids_to_tokens(ids) if _is_byte_level(tokenizer) else [None] * len(ids)
    lengths = np.zeros(n, dtype=np.int64)
    unmapped = []
    for i, token in zip(ids, tokens):
        if token is not None and all(char in CHAR_TO_BYTE for char in token):
            lengths[i] = len(token)  # one character per byte
        else:
            unmapped.append(i)
    if unmapped:
        texts = tokenizer.batch_decode([[i] for i in unmapped], clean_up_tokenization_spaces=False)
        lengths[unmapped] = [len(text.encode("utf-8")) for text in texts]
    for i, token in added.items():
        lengths[i] = 0 if token.special else len(token.content.encode("utf-8"))
    return lengths


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the full tokenizer definition: equal fingerprints encode every text identically."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def _is_byte_level(tokenizer: PreTrainedTokenizerFast) -> bool:
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(part.get("type") == "ByteLevel" for part in parts)


def _cached_bpe(
    documents: Callable[[], Iterable[str]], vocab_size: int, fingerprint: str | None
) -> PreTrainedTokenizerFast:
    if fingerprint is None:
        return train_bpe(documents(), vocab_size)
    key = hashlib.sha256(f"bpe-v2\n{fingerprint}\n{vocab_size}".encode()).hexdigest()[:16]
    directory = cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{key}"
    if (directory / "tokenizer.json").is_file():
        try:
            return load_pretrained(str(directory))
        except DataError as exc:  # a damaged cache is trained again, not trusted
            from rich.console import Console
            from rich.markup import escape

            Console(stderr=True).print(f"[yellow]warning:[/] the cached tokenizer {escape(str(directory))} is "
                                       f"damaged ({escape(str(exc)[:160])}); training it again", highlight=False)
            shutil.rmtree(directory, ignore_errors=True)
    _save_atomically(train_bpe(documents(), vocab_size), directory)
    return load_pretrained(str(directory))  # the reloaded form, so first and later runs fingerprint alike


def _save_atomically(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; a cache directory is not
        os.replace(staging, directory)
    except OSError:
        if not (directory / "tokenizer.json").is_file():  # lost a race to another process: that is fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
