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
* ``window_sums`` (``window_scan`` in state form) is chunked: inside a chunk of C tokens a masked C×C
  weight matrix against each query's own max gives the part of its window in that chunk (one batched
  matmul); the window's partial first chunk is one more such matmul; the whole chunks in between come
  from the chunk totals, a sequence C times shorter, windowed (or prefix-summed) by the same function,
  recursively. Work O(T·C·D) whatever the window, depth log_C T, no Python loop over positions, no
  difference of sums.
* The backward (``_AdditiveAttention``) is not autograd through all of that but one more ``window_sums``,
  backwards in time, against the forward's maxima: the same cost as the forward, every exponent ≤ 0 again.
* Exponentials are 2^(x·log2 e): PyTorch's CPU ``exp`` falls off its vector path for the large negative
  arguments that masked and far-below-the-max scores give (5–20× slower there), ``exp2`` does not.

Kernels run in fp32 at least (fp64 stays fp64) with autocast off: the max subtraction needs the
precision, and the cost is linear in T. ``naive.py`` beside this file writes g_i out one position at a
time; the tests compare these kernels (and their gradients) with it.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

# A finite "minus infinity": exp(NEG - m) == 0 for any real m, and NEG - NEG == 0 keeps empty states NaN-free.
NEG = -1e30
LOG2E = 1.4426950408889634  # e^x = 2^(x·log2 e)
CHUNK = 16  # fastest on CPU for head dims 32-128 (measured again with exp2: 8 and 32 are no faster, 64 slower)
# Windows up to BAND tokens in sequences up to BAND_LENGTH take band_sums (one shifted product per offset, no
# chunks): there the chunked scan's fixed cost per call dominates and the band is 1.5-2× faster (k = 4, 8 at
# 512-2048 tokens, measured). Longer sequences keep the chunked scan for every window, whose cost does not
# depend on the window (the leap suite holds k = 4 and k = 4096 within 10 % at 4096 and 16384 tokens).
BAND, BAND_LENGTH = 8, 2048


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
    w = _exp(s.m - m)
    return State(m, (w * s.z).sum(-1, keepdim=True), (w[..., None] * s.n).sum(-2, keepdim=True))


def prefix_scan(s: State, chunk: int = CHUNK) -> State:
    """Inclusive prefix states along the last time axis: out[i] summarises tokens 0..i."""
    return window_scan(s, None, chunk)


def window_scan(s: State, window: int | None, chunk: int = CHUNK) -> State:
    """out[i] summarises tokens max(0, i-window+1)..i; ``window=None`` (or ≥ T) is the global prefix.

    The state form of ``window_sums``: the columns summed are [n, z].
    """
    ref, sums = window_sums(s.m, torch.cat([s.n, s.z[..., None]], dim=-1), window, chunk)
    return State(ref, sums[..., -1], sums[..., :-1])


def window_sums(
    m: torch.Tensor, zn: torch.Tensor, window: int | None, chunk: int = CHUNK, reference: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref, sums) with sums_i = Σ_{l∈W(i)} e^{m_l − ref_i} zn_l for scores m (..., T), columns zn (..., T, E).

    ref_i is the largest m_l of W(i) unless ``reference`` gives it, which must then be ≥ every m_l of W(i)
    (the backward passes its own); either way every exponent is ≤ 0.

    The sequence is cut into chunks of C tokens. Query i = c·C + r sees tokens j ≤ r of its own chunk
    (and j > r - window, for a window shorter than a chunk), plus, with window - 1 = K·C + ρ:

    * rows r ≥ ρ: tokens j ≥ r - ρ of chunk c - K, and all of chunks c-K+1 .. c-1;
    * rows r < ρ: tokens j ≥ C + r - ρ of chunk c - K - 1, and all of chunks c-K .. c-1;
    * global: all chunks before c.

    Partial chunks are masked C×C weight matrices (one batched matmul for the own chunk, one per row
    group for the window's start), against one reference per query. Whole chunks come from a window (or
    prefix) over the chunk totals, a sequence C times shorter, computed by this function recursively. Work
    is O(T·C·E) whatever the window; nothing is subtracted.
    """
    length = m.shape[-1]
    if window is not None and window >= length:
        window = None
    if window is None:
        chunk = min(chunk, length)
    else:
        chunk = _window_chunk(window, chunk)
    n_chunks = -(-length // chunk)
    m, zn = _pad(m, zn, n_chunks * chunk)
    m, zn = m.unflatten(-1, (n_chunks, chunk)), zn.unflatten(-2, (n_chunks, chunk))  # (..., n_chunks, C[, E])
    masks = _masks(chunk, window, m.device)
    groups = _row_groups(m, zn, window, chunk, masks)

    if reference is None:
        seen = m.detach()
        row_max = seen[..., None, :].masked_fill(masks.own_hidden, NEG).amax(-1)
        if groups:
            row_max = torch.maximum(row_max, torch.cat([g.max_seen(seen) for g in groups], dim=-1))
    else:  # rows past the end see nothing: a reference above every score
        row_max = F.pad(reference, (0, n_chunks * chunk - length), value=-NEG).unflatten(-1, (n_chunks, chunk))
    out = _weights(m, row_max, masks.own_hidden) @ zn
    for group in groups:
        group.add_to(out, m, zn, row_max)
    return row_max.flatten(-2)[..., :length], out.flatten(-3, -2)[..., :length, :]


def band_sums(
    m: torch.Tensor, zn: torch.Tensor, window: int, reference: torch.Tensor | None = None, reverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``window_sums`` for a short window, written out as ``window`` shifted products: (ref, sums) with

        sums_i = Σ_{t<window} e^{m_l − ref_i} zn_l,   l = i − t   (or l = i + t with ``reverse``)

    The chunked scan spends a few dozen small operations per call whatever the window; for k ≤ ``BAND`` this
    is k multiply-adds over the columns and one exp over a (..., T, k) band of scores, and ``reverse`` (the
    backward's direction) needs no flipped copies. ref_i is the largest m_l of the band unless ``reference``
    gives one ≥ all of them; tokens beyond either end count as NEG with zero columns.
    """
    length = m.shape[-1]
    pad = (0, window - 1) if reverse else (window - 1, 0)
    m_pad, zn_pad = F.pad(m, pad, value=NEG), F.pad(zn, (0, 0) + pad)
    band = m_pad.unfold(-1, window, 1)  # (..., T, k): band[..., i, t] is padded token i + t
    if reference is None:
        reference = band.amax(-1)
    weights = (band - reference[..., None]).mul_(LOG2E).exp2_()
    sums = zn_pad[..., :length, :] * weights[..., 0, None]
    for t in range(1, window):
        sums.addcmul_(zn_pad[..., t : t + length, :], weights[..., t, None])
    return reference, sums


class _RowGroup(NamedTuple):
    """Rows of every chunk that see the same tokens outside their own chunk."""

    rows: slice
    back: int  # the window's first, partial chunk is this many chunks back (0: none)
    start_hidden: torch.Tensor | None  # (rows, C): which of its keys each row does not see
    whole: tuple[torch.Tensor, torch.Tensor] | None  # per chunk: (ref, sums) of the whole chunks between

    def max_seen(self, m: torch.Tensor) -> torch.Tensor:
        seen = torch.full_like(m[..., self.rows], NEG)
        if self.back:
            seen = _shift_chunks(m, self.back, NEG)[..., None, :].masked_fill(self.start_hidden, NEG).amax(-1)
        if self.whole is not None:
            seen = torch.maximum(seen, self.whole[0].detach()[..., None])
        return seen

    def add_to(self, out: torch.Tensor, m: torch.Tensor, zn: torch.Tensor, row_max: torch.Tensor) -> None:
        """out[..., rows, :] += Σ over the tokens outside the own chunk of e^{m - row_max}·zn, in place
        (no padded or zero-filled copies: this runs on every token)."""
        rows = out[..., self.rows, :]
        row_max = row_max[..., self.rows]
        if self.back:
            kept = m.shape[-2] - self.back
            weights = _weights(m[..., :kept, :], row_max[..., self.back :, :], self.start_hidden)
            rows[..., self.back :, :, :] += weights @ zn[..., :kept, :, :]
        if self.whole is not None:
            whole_m, whole_zn = self.whole
            rows.addcmul_(_exp(whole_m[..., None] - row_max)[..., None], whole_zn[..., None, :])


class _Masks(NamedTuple):
    """The C×C "may not see" masks of one (chunk, window): the own chunk's, and each row group's start chunk's
    (key j of the chunk ``back`` chunks behind, for query row r), built once per process."""

    own_hidden: torch.Tensor
    divides: torch.Tensor  # rows r see keys j > r of their start chunk (the chunk divides the window)
    late: torch.Tensor  # rows r ≥ ρ see keys j ≥ r − ρ
    early: torch.Tensor  # rows r < ρ see keys j ≥ r + C − ρ


@functools.lru_cache(maxsize=128)
def _masks(chunk: int, window: int | None, device: torch.device) -> _Masks:
    r = torch.arange(chunk, device=device)[:, None]  # query offset in its chunk
    j = torch.arange(chunk, device=device)[None, :]  # key offset in its chunk
    own = (j <= r) if window is None else (j <= r) & (j > r - window)
    rho = 0 if window is None else (window - 1) % chunk
    return _Masks(~own, ~(j > r), ~(j >= r - rho), ~(j >= r + chunk - rho))


def _row_groups(m: torch.Tensor, zn: torch.Tensor, window: int | None, chunk: int, masks: _Masks) -> list[_RowGroup]:
    """What each row of a chunk sees beyond its own chunk (see ``window_sums``); [] when nothing."""
    n_chunks = m.shape[-2]
    if n_chunks == 1:
        return []
    if window is None:
        return [_RowGroup(slice(0, chunk), 0, None, _shift_by(*window_sums(*_chunk_totals(m, zn), None, chunk), 1))]
    far, rho = divmod(window - 1, chunk)
    totals = _chunk_totals(m, zn) if far >= 1 else None  # whole chunks in the window: only beyond one chunk

    def group(rows: slice, back: int, hidden: torch.Tensor, whole_count: int) -> _RowGroup:
        back = back if back < n_chunks else 0  # a start before the sequence contributes nothing
        whole = _shift_by(*window_sums(*totals, whole_count, chunk), 1) if whole_count >= 1 else None
        return _RowGroup(rows, back, hidden[rows] if back else None, whole)

    if rho == chunk - 1:  # the chunk divides the window: one group (row C-1's start is a whole chunk)
        return [group(slice(0, chunk), far + 1, masks.divides, far)]
    groups = [group(slice(rho, chunk), far, masks.late, far - 1)]  # far ≥ 1 here: window > chunk
    if rho > 0:
        groups.insert(0, group(slice(0, rho), far + 1, masks.early, far))
    return groups


def _weights(m: torch.Tensor, row_max: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """e^{m_j - row_max_r} where row r sees key j (``hidden[r, j]`` False), else 0: (..., n_chunks, rows, C).

    Masked after subtracting, so that the weight is 0 even when a row sees only padding.
    """
    return (m[..., None, :] - row_max[..., None]).mul_(LOG2E).masked_fill_(hidden, NEG).exp2_()


def _exp(x: torch.Tensor) -> torch.Tensor:
    """e^x as 2^(x·log2 e), for x ≤ 0: PyTorch's CPU exp leaves its vector path for the large negative
    arguments that every masked or far-below-the-max score gives (5–20× slower there, measured); exp2
    does not. The product adds a relative error of 2^-24·|x| to the exponent, negligible for the weights
    that matter (|x| ≲ 30) and the same order as the subtraction before it."""
    return (x * LOG2E).exp2_()


def _window_chunk(window: int, chunk: int) -> int:
    """The chunk size for a window: the window itself when shorter than ``chunk``, else a divisor of the
    window in [chunk/2, chunk] when there is one (the window's start then falls in a single chunk for
    every row, one matmul fewer), else ``chunk``."""
    if window <= chunk:
        return window
    return next((c for c in range(chunk, chunk // 2 - 1, -1) if window % c == 0), chunk)


def _chunk_totals(m: torch.Tensor, zn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chunk, the reference (its largest score) and the sums of all its tokens: (..., n_chunks[, E])."""
    top = m.detach().amax(-1)
    sums = (_exp(m - top[..., None])[..., None, :] @ zn).squeeze(-2)
    return top, sums


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

    Without ``past`` (training, prefill) the scan runs inside ``_AdditiveAttention``, whose backward is a
    second scan of the same kind, backwards in time, instead of autograd through every step of the first.
    """
    dtype, out_dtype = torch.promote_types(values.dtype, torch.float32), values.dtype
    with torch.autocast(values.device.type, enabled=False):
        if past is None:
            scores, values = scores.to(dtype), values.to(dtype)
            out, ref, z = _AdditiveAttention.apply(scores, values, mask, window, chunk)
            length = scores.shape[-1]
            if window is None:
                last = slice(length - 1, length)
                next_past = State(ref[..., last], z[..., last], (out[..., last, :] * z[..., last, None]).detach())
            else:
                keep = min(window - 1, length)
                next_past = _take(token_states(scores.detach(), values.detach(), mask), length - keep, keep)
            return out.to(out_dtype), next_past
        tokens = token_states(scores.to(dtype), values.to(dtype), mask)
        new = tokens.length
        seq = _cat(past, tokens)
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


class _AdditiveAttention(torch.autograd.Function):
    """g = window_sums of [v, 1] under the scores, normalised; returns (g, ref, z), the last two constant.

    Backward, with α_il = e^{s_l − ref_i} / z_i the weight of token l in output i, u_i = [dg_i, g_i·dg_i] / z_i
    and R(l) the outputs whose window holds l (the next k positions):

        Q_l = Σ_{i∈R(l)} e^{s_l − ref_i} u_i,   dv_l = Q_l[:D],   ds_l = v_l·dv_l − Q_l[D]

    Q is ``window_sums`` over the time-reversed sequence with scores −ref_i and the given references −s_l
    (≥ every −ref_i they meet, since ref_i ≥ s_l for l ∈ W(i)): exponents stay ≤ 0 as in the forward. Padded
    tokens (s = NEG, reference +1e30) get exactly zero; outputs without a real token (z = 0) pass nothing back.
    """

    @staticmethod
    def forward(ctx, scores, values, mask, window, chunk):
        m, zn = _token_columns(scores, values, mask)
        if window is not None and window >= m.shape[-1]:
            window = None
        if _banded(window, m.shape[-1]):
            ref, sums = band_sums(m, zn, window)
        else:
            ref, sums = window_sums(m, zn, window, chunk)
        z = sums[..., -1]
        out = sums[..., :-1] / torch.where(z > 0, z, 1.0)[..., None]  # contiguous, for the gate after
        ctx.window, ctx.chunk = window, chunk
        ctx.save_for_backward(m, values, ref, z, out)
        ctx.mark_non_differentiable(ref, z)
        return out, ref, z

    @staticmethod
    def backward(ctx, grad, _ref_grad, _z_grad):
        m, values, ref, z, out = ctx.saved_tensors
        grad = grad.to(out.dtype)
        width = out.shape[-1]
        real = z > 0
        denominator = torch.where(real, z, 1.0)[..., None]
        u = torch.empty(*out.shape[:-1], width + 1, dtype=out.dtype, device=out.device)
        torch.div(grad, denominator, out=u[..., :width])
        torch.linalg.vecdot(out, grad, out=u[..., width])
        u[..., width : width + 1].div_(denominator)
        keys = torch.where(real, -ref, NEG)  # outputs with nothing in their window pass nothing back
        if _banded(ctx.window, m.shape[-1]):
            _, q = band_sums(keys, u, ctx.window, reference=-m, reverse=True)
        else:
            _, q = window_sums(keys.flip(-1), u.flip(-2), ctx.window, ctx.chunk, reference=(-m).flip(-1))
            q = q.flip(-2)
        grad_values = q[..., :width]
        grad_scores = torch.linalg.vecdot(values, grad_values) - q[..., width]
        return grad_scores, grad_values, None, None, None


def _banded(window: int | None, length: int) -> bool:
    return window is not None and window <= BAND and length <= BAND_LENGTH


def _token_columns(
    scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw tokens as scores and columns [v·z, z], z = 1 for real tokens and 0 for masked ones."""
    zn = torch.empty(*values.shape[:-1], values.shape[-1] + 1, dtype=values.dtype, device=values.device)
    if mask is None:
        zn[..., :-1] = values
        zn[..., -1] = 1.0
        return scores, zn
    mask = mask.expand_as(scores)
    z = mask.to(scores.dtype)
    torch.mul(values, z[..., None], out=zn[..., :-1])
    zn[..., -1] = z
    return torch.where(mask, scores, NEG), zn


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


def _shift_by(m: torch.Tensor, zn: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every (ref, sums) ``steps`` positions later along the time axis; the first ``steps`` become empty."""
    steps = min(steps, m.shape[-1])
    if steps == 0:
        return m, zn
    keep = m.shape[-1] - steps
    return F.pad(m.narrow(-1, 0, keep), (steps, 0), value=NEG), F.pad(zn.narrow(-2, 0, keep), (0, 0, steps, 0))


def _pad(m: torch.Tensor, zn: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append empty tokens (score NEG, zero columns) up to ``length``."""
    extra = length - m.shape[-1]
    if extra == 0:
        return m, zn
    return F.pad(m, (0, extra), value=NEG), F.pad(zn, (0, 0, 0, extra))


def _take(s: State, start: int, length: int) -> State:
    return State(s.m.narrow(-1, start, length), s.z.narrow(-1, start, length), s.n.narrow(-2, start, length))


def _cat(a: State, b: State) -> State:
    return State(torch.cat([a.m, b.m], -1), torch.cat([a.z, b.z], -1), torch.cat([a.n, b.n], -2))
