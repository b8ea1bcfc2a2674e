"""Causal additive attention by cumulative sums, global or over the last k tokens, stable at any score scale.

LEAP (and causal Fastformer) need, for every position i, the softmax-weighted average of vectors v_l over
a causal window W(i) = {max(0, i-k+1), ..., i} (all of 0..i when global):

    g_i = Σ_{l∈W(i)} e^{s_l} v_l / Σ_{l∈W(i)} e^{s_l}

The seed computes this as a ratio of cumulative sums of e^{s_l} and, for windows, as a *difference* of
two cumulative sums. Both break in practice: e^{s} overflows for scores above ~88 (fp32) and, when
out-of-window mass dominates, the difference cancels to noise. Here nothing is ever subtracted and
nothing is exponentiated without its running max taken out first:

* A prefix is summarised by a ``State`` (m, z, n): a reference max m, the denominator z = Σ e^{s_l - m}
  and the numerator n = Σ e^{s_l - m} v_l. Two states merge exactly by rescaling both to the larger max
  (the online-softmax rule), so every exponent is ≤ 0.
* ``prefix_scan`` is chunked: inside a chunk of C tokens a lower-triangular C×C weight matrix against
  the running max gives every prefix state (one matmul); the chunk totals are scanned the same way,
  recursively, and merged back. Work O(T·C·D), depth log_C T, no Python loop over positions.
* ``window_scan`` cuts the sequence into blocks of k: a window is the suffix of the previous block
  followed by the prefix of the current one, two scans merged with the same rule. Work is independent
  of k and no difference of sums appears.

Kernels run in fp32 at least (fp64 stays fp64) with autocast off: the max subtraction needs the
precision, and the cost is linear in T.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

# A finite "minus infinity": exp(NEG - m) == 0 for any real m, and NEG - NEG == 0 keeps empty states NaN-free.
NEG = -1e30
CHUNK = 64


class State(NamedTuple):
    """Summaries of token sets along a time axis: m, z of shape (..., T), n of shape (..., T, D).

    A raw token with score s and vector v is the state (s, 1, v); a masked token or an empty set is
    (NEG, 0, 0). The weighted average of a state is n / z.
    """

    m: torch.Tensor
    z: torch.Tensor
    n: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> State:
        """Apply a batch-axis operation (indexing, repeat) to all three tensors."""
        return State(fn(self.m), fn(self.z), fn(self.n))

    def output(self) -> torch.Tensor:
        """The weighted averages n / z (zero for empty states)."""
        return self.n / torch.where(self.z > 0, self.z, 1.0)[..., None]

    @property
    def length(self) -> int:
        return self.m.shape[-1]


def token_states(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None) -> State:
    """Raw tokens as states; ``mask`` (broadcastable to scores, True = real token) turns tokens off."""
    if mask is None:
        return State(scores, torch.ones_like(scores), values)
    mask = mask.expand_as(scores)
    z = mask.to(scores.dtype)
    return State(torch.where(mask, scores, NEG), z, values * z[..., None])


def combine(a: State, b: State) -> State:
    """The state of the union of two disjoint token sets (broadcasting)."""
    m = torch.maximum(a.m, b.m).detach()
    wa, wb = torch.exp(a.m - m), torch.exp(b.m - m)
    return State(m, a.z * wa + b.z * wb, a.n * wa[..., None] + b.n * wb[..., None])


def total(s: State) -> State:
    """The state of all tokens along the time axis, keeping it as an axis of length 1."""
    m = s.m.detach().amax(-1, keepdim=True)
    w = torch.exp(s.m - m)
    return State(m, (w * s.z).sum(-1, keepdim=True), (w[..., None] * s.n).sum(-2, keepdim=True))


def prefix_scan(s: State, chunk: int = CHUNK) -> State:
    """Inclusive prefix states along the last time axis: out[i] summarises tokens 0..i."""
    length = s.length
    if length <= chunk:
        return _local_scan(s)
    n_chunks = -(-length // chunk)
    local = _local_scan(_split(_pad(s, n_chunks * chunk), chunk))  # (..., n_chunks, chunk)
    totals = State(local.m[..., -1], local.z[..., -1], local.n[..., -1, :])
    carry = _shift(prefix_scan(totals, chunk), dim=-1, right=True)  # everything before each chunk
    merged = combine(State(carry.m[..., None], carry.z[..., None], carry.n[..., None, :]), local)
    return _take(_merge(merged), 0, length)


def window_scan(s: State, window: int | None, chunk: int = CHUNK) -> State:
    """out[i] summarises tokens max(0, i-window+1)..i; ``window=None`` (or ≥ T) is the global prefix."""
    length = s.length
    if window is None or window >= length:
        return prefix_scan(s, chunk)
    n_blocks = -(-length // window)
    blocks = _split(_pad(s, n_blocks * window), window)  # (..., n_blocks, window)
    head = prefix_scan(blocks, chunk)  # block start .. i
    tail = _flip(prefix_scan(_flip(blocks), chunk))  # j .. block end
    # token j of block b also sees tokens j+1.. of block b-1: shift the suffixes one token left, one block right
    tail = _shift(_shift(tail, dim=-1, right=False), dim=-2, right=True)
    return _take(_merge(combine(tail, head)), 0, length)


def additive_attention(
    scores: torch.Tensor,
    values: torch.Tensor,
    window: int | None = None,
    mask: torch.Tensor | None = None,
    past: State | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, State]:
    """g_i = Σ_{l∈W(i)} softmax_l(scores) values_l for scores (..., T), values (..., T, D).

    ``past`` continues an earlier call (recurrent generation) and the second result is the ``past`` for
    the next call: for global attention the single running state (max, denominator, numerator), O(1) in
    the context; for a window of k the last k-1 raw tokens, all that later windows can still see.
    """
    dtype = torch.promote_types(values.dtype, torch.float32)
    with torch.autocast(values.device.type, enabled=False):
        tokens = token_states(scores.to(dtype), values.to(dtype), mask)
        new = tokens.length
        seq = tokens if past is None else _cat(past, tokens)
        if new == 1 and (window is None or seq.length <= window):
            states = total(seq)  # one query over a short sequence: O(past length), no scan
        else:
            states = _take(window_scan(seq, window, chunk), seq.length - new, new)
        if window is None:
            next_past = _take(states, new - 1, 1)
        else:
            keep = min(window - 1, seq.length)
            next_past = _take(seq, seq.length - keep, keep)
        return states.output().to(values.dtype), next_past


def window_weights(scores: torch.Tensor, window: int | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense weights α (..., T, T): α[i, l] = softmax over l ∈ W(i) of scores[l], zero elsewhere.

    O(T²) memory: for inspecting models (``explain``), not for training. Rows with no real token are zero.
    """
    length = scores.shape[-1]
    i = torch.arange(length, device=scores.device)[:, None]
    l = torch.arange(length, device=scores.device)[None, :]
    allowed = l <= i
    if window is not None:
        allowed = allowed & (l > i - window)
    if mask is not None:
        allowed = allowed & mask[..., None, :].bool()
    logits = scores[..., None, :].masked_fill(~allowed, float("-inf"))
    return logits.softmax(-1).nan_to_num(0.0)


def _local_scan(s: State) -> State:
    """Prefix states of one short time axis: a lower-triangular weight matrix against the running max."""
    length = s.length
    run_max = s.m.detach().cummax(-1).values
    causal = torch.ones(length, length, dtype=torch.bool, device=s.m.device).tril()
    w = (s.m[..., None, :] - run_max[..., :, None]).masked_fill(~causal, NEG).exp()
    zn = w @ torch.cat([s.n, s.z[..., None]], dim=-1)
    return State(run_max, zn[..., -1], zn[..., :-1])


def _pad(s: State, length: int) -> State:
    """Append empty tokens up to ``length``."""
    extra = length - s.length
    if extra == 0:
        return s
    return State(F.pad(s.m, (0, extra), value=NEG), F.pad(s.z, (0, extra)), F.pad(s.n, (0, 0, 0, extra)))


def _split(s: State, size: int) -> State:
    """(..., T) → (..., T/size, size)."""
    shape = s.m.shape[:-1] + (s.length // size, size)
    return State(s.m.reshape(shape), s.z.reshape(shape), s.n.reshape(shape + s.n.shape[-1:]))


def _merge(s: State) -> State:
    """(..., A, B) → (..., A·B)."""
    return State(s.m.flatten(-2), s.z.flatten(-2), s.n.flatten(-3, -2))


def _take(s: State, start: int, length: int) -> State:
    return State(s.m.narrow(-1, start, length), s.z.narrow(-1, start, length), s.n.narrow(-2, start, length))


def _cat(a: State, b: State) -> State:
    return State(torch.cat([a.m, b.m], -1), torch.cat([a.z, b.z], -1), torch.cat([a.n, b.n], -2))


def _flip(s: State) -> State:
    return State(s.m.flip(-1), s.z.flip(-1), s.n.flip(-2))


def _shift(s: State, dim: int, right: bool) -> State:
    """Shift by one along time-like axis ``dim`` (negative, as counted on m), filling with the empty state."""

    def shift(x: torch.Tensor, d: int, fill: float) -> torch.Tensor:
        size = x.shape[d]
        kept = x.narrow(d, 0, size - 1) if right else x.narrow(d, 1, size - 1)
        shape = list(x.shape)
        shape[d] = 1
        edge = x.new_full(shape, fill)
        return torch.cat([edge, kept] if right else [kept, edge], dim=d)

    return State(shift(s.m, dim, NEG), shift(s.z, dim, 0.0), shift(s.n, dim - 1, 0.0))
