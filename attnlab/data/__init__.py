"""Data: corpora and sources, tokenizers, cached token files and their deterministic splits, metrics."""

from __future__ import annotations

from .corpus import fetch_shakespeare
from .dataset import PreparedData, prepare_data
from .metrics import bits_per_byte, perplexity
from .sources import iter_documents, source_fingerprint
from .split import TokenSplit
from .tokenizer import build_tokenizer, token_byte_lengths, tokenizer_fingerprint

__all__ = [
    "PreparedData",
    "TokenSplit",
    "bits_per_byte",
    "build_tokenizer",
    "fetch_shakespeare",
    "iter_documents",
    "perplexity",
    "prepare_data",
    "source_fingerprint",
    "token_byte_lengths",
    "tokenizer_fingerprint",
]
