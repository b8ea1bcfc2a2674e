"""Causal additive attention by cumulative sums, global or over the last k tokens, stable at any score scale.

LEAP (and causal Fastformer) need, for every position i, the softmax-weighted average of vectors v_l over
a causal window W(i) = {max(0, i-k+1), ..., i} (all of 0..i when global):

    g_i = Σ_{l∈W(i)} e^{s_l} v_l / Σ_{l∈W(i)} e^{s_l}

The LEAP package description writes this as a ratio of cumulative sums of e^{s_l} and, for windows, as
a *difference* of two cumulative sums. Both break in practice: e^{s} overflows for scores above ~88 (fp32)
and, when out-of-window mass dominates, the difference cancels to noise. Here nothing is ever subtracted and
nothing is exponentiated without its running max taken out first:

* A prefix is summarised by a ``State`` (m, z, n): a reference max m, the denominator z = Σ e^{s_l - m}
  and the numerator n = Σ e^{s_l - m} v_l. Two states merge exactly by rescaling both to the larger max
  (the online-softmax rule), so every exponent is ≤ 0.
* ``window_scan`` is chunked: inside a chunk of C tokens a masked C×C weight matrix against each
  query's own max gives the part of its window in that chunk (one batched matmul); the window's
  partial first chunk is one more such matmul; the whole chunks in between come from the chunk totals,
  a sequence C times shorter, windowed (or prefix-summed) by the same function, recursively. Work
  O(T·C·D) whatever the window, depth log_C T, no Python loop over positions, no difference of sums.

Kernels run in fp32 at least (fp64 stays fp64) with autocast off: the max subtraction needs the
precision, and the cost is linear in T. ``naive.py`` beside this file writes g_i out one position at a
time; the tests compare these kernels with it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

# A finite "minus infinity": exp(NEG - m) == 0 for any real m, and NEG - NEG == 0 keeps empty states NaN-free.
NEG = -1e30
CHUNK = 16  # fastest on CPU for head dims 32-128 (measured: 64 costs about twice as much)


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


def total(s: State) -> State:
    """The state of all tokens along the time axis, keeping it as an axis of length 1."""
    m = s.m.detach().amax(-1, keepdim=True)
    w = torch.exp(s.m - m)
    return State(m, (w * s.z).sum(-1, keepdim=True), (w[..., None] * s.n).sum(-2, keepdim=True))


def prefix_scan(s: State, chunk: int = CHUNK) -> State:
    """Inclusive prefix states along the last time axis: out[i] summarises tokens 0..i."""
    return window_scan(s, None, chunk)


def window_scan(s: State, window: int | None, chunk: int = CHUNK) -> State:
    """out[i] summarises tokens max(0, i-window+1)..i; ``window=None`` (or ≥ T) is the global prefix.

    The sequence is cut into chunks of C tokens. Query i = c·C + r sees tokens j ≤ r of its own chunk
    (and j > r - window, for a window shorter than a chunk), plus, with window - 1 = K·C + ρ:

    * rows r ≥ ρ: tokens j ≥ r - ρ of chunk c - K, and all of chunks c-K+1 .. c-1;
    * rows r < ρ: tokens j ≥ C + r - ρ of chunk c - K - 1, and all of chunks c-K .. c-1;
    * global: all chunks before c.

    Partial chunks are masked C×C weight matrices (one batched matmul for the own chunk, one per row
    group for the window's start), against one reference max per query taken over everything it sees.
    Whole chunks come from a window (or prefix) over the chunk totals, a sequence C times shorter,
    computed by this function recursively. Work is O(T·C·D) whatever the window; nothing is
    subtracted and every exponent is ≤ 0.
    """
    length = s.length
    if window is not None and window >= length:
        window = None
    if window is None:
        chunk = min(chunk, length)
    else:
        chunk = _window_chunk(window, chunk)
    n_chunks = -(-length // chunk)
    x = _split(_pad(s, n_chunks * chunk), chunk)  # m, z: (..., n_chunks, C); n: (..., n_chunks, C, D)
    zn = torch.cat([x.n, x.z[..., None]], dim=-1)
    r = torch.arange(chunk, device=s.m.device)[:, None]  # query offset in its chunk
    j = torch.arange(chunk, device=s.m.device)[None, :]  # key offset in its chunk
    own = (j <= r) if window is None else (j <= r) & (j > r - window)
    groups = _row_groups(x, zn, window, chunk, r, j)

    row_max = x.m.detach()[..., None, :].masked_fill(~own, NEG).amax(-1)
    if groups:
        row_max = torch.maximum(row_max, torch.cat([g.max_seen(x.m.detach()) for g in groups], dim=-1))
    out = _weights(x.m, row_max, own) @ zn
    for group in groups:
        group.add_to(out, x.m, zn, row_max)
    return _take(_merge(State(row_max, out[..., -1], out[..., :-1])), 0, length)


class _RowGroup(NamedTuple):
    """Rows of every chunk that see the same tokens outside their own chunk."""

    rows: slice
    back: int  # the window's first, partial chunk is this many chunks back (0: none)
    start_mask: torch.Tensor | None  # (rows, C): which of its keys each row sees
    whole: State | None  # per chunk: the state of the whole chunks between, (..., n_chunks)

    def max_seen(self, m: torch.Tensor) -> torch.Tensor:
        seen = torch.full_like(m[..., self.rows], NEG)
        if self.back:
            seen = _shift_chunks(m, self.back, NEG)[..., None, :].masked_fill(~self.start_mask, NEG).amax(-1)
        if self.whole is not None:
            seen = torch.maximum(seen, self.whole.m.detach()[..., None])
        return seen

    def add_to(self, out: torch.Tensor, m: torch.Tensor, zn: torch.Tensor, row_max: torch.Tensor) -> None:
        """out[..., rows, :] += Σ over the tokens outside the own chunk of e^{s - row_max}·[v, 1], in place
        (no padded or zero-filled copies: this runs on every token)."""
        rows = out[..., self.rows, :]
        row_max = row_max[..., self.rows]
        if self.back:
            kept = m.shape[-2] - self.back
            weights = _weights(m[..., :kept, :], row_max[..., self.back :, :], self.start_mask)
            rows[..., self.back :, :, :] += weights @ zn[..., :kept, :, :]
        if self.whole is not None:
            whole_zn = torch.cat([self.whole.n, self.whole.z[..., None]], dim=-1)
            rows.addcmul_(torch.exp(self.whole.m[..., None] - row_max)[..., None], whole_zn[..., None, :])


def _row_groups(
    x: State, zn: torch.Tensor, window: int | None, chunk: int, r: torch.Tensor, j: torch.Tensor
) -> list[_RowGroup]:
    """What each row of a chunk sees beyond its own chunk (see ``window_scan``); [] when nothing."""
    n_chunks = x.m.shape[-2]
    if n_chunks == 1:
        return []
    totals = _chunk_totals(x, zn)
    if window is None:
        return [_RowGroup(slice(0, chunk), 0, None, _shift_by(prefix_scan(totals, chunk), 1))]
    far, rho = divmod(window - 1, chunk)

    def group(rows: slice, back: int, mask: torch.Tensor, whole_count: int) -> _RowGroup:
        back = back if back < n_chunks else 0  # a start before the sequence contributes nothing
        whole = _shift_by(window_scan(totals, whole_count, chunk), 1) if whole_count >= 1 else None
        return _RowGroup(rows, back, mask[rows] if back else None, whole)

    if rho == chunk - 1:  # the chunk divides the window: one group (row C-1's start is a whole chunk)
        return [group(slice(0, chunk), far + 1, j > r, far)]
    groups = [group(slice(rho, chunk), far, j >= r - rho, far - 1)]  # far ≥ 1 here: window > chunk
    if rho > 0:
        groups.insert(0, group(slice(0, rho), far + 1, j >= r + chunk - rho, far))
    return groups


def _weights(m: torch.Tensor, row_max: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """e^{m_j - row_max_r} where mask[r, j], else 0: (..., n_chunks, rows, C).

    Masked after subtracting, so that exp(NEG - row_max) is 0 even when a row sees only padding.
    """
    return (m[..., None, :] - row_max[..., None]).masked_fill(~mask, NEG).exp()


def _window_chunk(window: int, chunk: int) -> int:
    """The chunk size for a window: the window itself when shorter than ``chunk``, else a divisor of the
    window in [chunk/2, chunk] when there is one (the window's start then falls in a single chunk for
    every row, one matmul fewer), else ``chunk``."""
    if window <= chunk:
        return window
    return next((c for c in range(chunk, chunk // 2 - 1, -1) if window % c == 0), chunk)


def _chunk_totals(x: State, zn: torch.Tensor) -> State:
    """One state per chunk, summarising all of its tokens: (..., n_chunks)."""
    m = x.m.detach().amax(-1)
    total_zn = (torch.exp(x.m - m[..., None])[..., None, :] @ zn).squeeze(-2)
    return State(m, total_zn[..., -1], total_zn[..., :-1])


def _shift_chunks(t: torch.Tensor, back: int, fill: float) -> torch.Tensor:
    """(..., n_chunks, C): row c gets row c - back; the first ``back`` rows are ``fill``."""
    if back == 0:
        return t
    return F.pad(t[..., : t.shape[-2] - back, :], (0, 0, back, 0), value=fill)


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


def window_weights(
    scores: torch.Tensor, window: int | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
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


def _shift_by(s: State, steps: int) -> State:
    """Move every state ``steps`` positions later along the time axis; the first ``steps`` become empty."""
    steps = min(steps, s.length)
    if steps == 0:
        return s
    keep = s.length - steps
    return State(
        F.pad(s.m.narrow(-1, 0, keep), (steps, 0), value=NEG),
        F.pad(s.z.narrow(-1, 0, keep), (steps, 0)),
        F.pad(s.n.narrow(-2, 0, keep), (0, 0, steps, 0)),
    )


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
