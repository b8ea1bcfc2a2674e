"""Attention masks for causal mixers with padding and a cache, and for non-causal (encoder) mixers with padding,
built once per forward."""

from __future__ import annotations

import torch


def causal_mask(q_len: int, kv_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, kv_len) boolean, True where query i may attend key j: the queries are the *last* q_len of the
    kv_len positions (a cache holds the first kv_len − q_len), so query i sees keys j ≤ kv_len − q_len + i."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)


def own_key_mask(q_len: int, kv_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, kv_len) boolean, True only where key j is query i itself (j = kv_len − q_len + i)."""
    return torch.arange(kv_len, device=device)[None, :] == torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)


def attention_bias_mask(
    key_padding_mask: torch.Tensor | None, q_len: int, past_length: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (batch|1, 1, q_len, past+q_len) mask, True where query i may attend key j.

    Query i sits at key index ``past_length + i``; it sees keys j <= that index which are not padding. A
    query always sees itself, so a padded query row is never empty (its output is ignored, but it must not
    be NaN). Returns None when ``is_causal`` (no past) or no mask at all (one query, no past padding) is exact.
    """
    if key_padding_mask is None and (past_length == 0 or q_len == 1):
        return None
    kv_len = past_length + q_len
    mask = causal_mask(q_len, kv_len, device)[None, None]
    if key_padding_mask is not None:
        mask = (mask & key_padding_mask[:, None, None, :].bool()) | own_key_mask(q_len, kv_len, device)[None, None]
    return mask


def padding_mask(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean (batch, 1, 1, kv_len) mask of a non-causal layer, True where a key is a real token; None without
    padding. It broadcasts over the queries, so every query (padding too) sees all the real keys; a row of
    nothing but padding sees all its keys, so its (ignored) output is never NaN."""
    if key_padding_mask is None:
        return None
    mask = key_padding_mask.bool()
    return (mask | ~mask.any(-1, keepdim=True))[:, None, None, :]
