"""LEAP and causal Fastformer token mixers, and the recurrent-state cache they generate with.

Both mix tokens only through causal additive attention (``attnlab.ops.leap``): per head, a softmax over
one scalar score per token, applied to a cumulative (or windowed) weighted average. No pairwise scores
exist, so training is O(T) and generation keeps a fixed-size state instead of a growing KV cache.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache

from ..ops.leap import State, additive_attention
from .attention import merge_heads
from .context import MixerContext
from .rotary import apply_rotary


class LeapLayerCache:
    """One layer's generation state: a ``State`` per additive-attention stage ("slot") of the mixer.

    Global stages hold one running (max, denominator, numerator) per head; windowed stages hold the last
    k-1 tokens' (score, vector) per head. Neither grows with the context.
    """

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self) -> None:
        self.states: dict[int, State] = {}
        self.seen = 0

    def get_seq_length(self) -> int:
        return self.seen

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.states = {slot: s.map(lambda t: t[indices]) for slot, s in self.states.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.states = {slot: s.map(lambda t: t.repeat_interleave(repeats, dim=0)) for slot, s in self.states.items()}

    def reset(self) -> None:
        self.states.clear()
        self.seen = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("LEAP's recurrent state summarises the past and cannot be rolled back (crop)")


class LeapCache(Cache):
    """``generate()``'s cache for LEAP models: recurrent states, not keys and values."""

    def __init__(self, n_layers: int):
        super().__init__(layers=[LeapLayerCache() for _ in range(n_layers)])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length()


def causal_additive(
    scores: torch.Tensor, values: torch.Tensor, ctx: MixerContext, window: int | None, layer_idx: int, slot: int = 0
) -> torch.Tensor:
    """Additive attention of (B, H, T) scores over (B, H, T, D) values, honouring padding and the cache."""
    length = scores.shape[-1]
    mask = None if ctx.key_padding_mask is None else ctx.key_padding_mask[:, None, -length:]
    layer = ctx.cache.layers[layer_idx] if ctx.cache is not None else None
    past = layer.states.get(slot) if layer is not None else None
    out, next_past = additive_attention(scores, values, window, mask, past)
    if layer is not None:
        layer.states[slot] = next_past
        layer.seen = ctx.past_length + length
    return out


def _importance_logits(scores: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
    """Scores with padded tokens at -inf: softmax over a window of them gives the tokens' weights α."""
    if ctx.key_padding_mask is None:
        return scores
    return scores.masked_fill(~ctx.key_padding_mask[:, None, -scores.shape[-1] :], float("-inf"))


class LeapAttention(nn.Module):
    """Multi-head LEAP (the form of leap-transformer 1.0): per head, with D = head_dim,

        s_l = f_l·k_l / √D                                     focus score of token l
        (k̄_i, v̄_i) = Σ_{l∈W(i)} softmax_l(s) (k_l, v_l)      focused key and value
        y_i = σ(q_i·k̄_i / √D) · v̄_i                            query gates the focused value

    then an output projection. The score is a dot product of two projections (the LEAP description has a
    single vector w) so a head can focus by content; the sigmoid query gate lets each position decide how much
    of its window's summary to take. With ``n_kv_heads`` < ``n_heads`` the f, k, v projections and
    their scans are shared by groups of query heads. With RoPE, q and the averaged k are rotated, so the
    gate depends on relative positions (the score uses the unrotated k).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        window: int | None,
        layer_idx: int,
        bias: bool = True,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = d_model // n_heads
        self.window = window
        self.layer_idx = layer_idx
        kv_dim = self.n_kv_heads * self.head_dim
        self.proj = nn.Linear(d_model, d_model + 3 * kv_dim, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.out.is_residual_projection = True

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = x.shape
        heads, kv_heads, dim = self.n_heads, self.n_kv_heads, self.head_dim
        q, f, k, v = self.proj(x).split([heads * dim] + [kv_heads * dim] * 3, dim=-1)
        q = q.view(batch, seq, heads, dim).transpose(1, 2)
        f, k, v = (t.view(batch, seq, kv_heads, dim).transpose(1, 2) for t in (f, k, v))
        scores = torch.linalg.vecdot(f, k) * dim**-0.5  # (B, H_kv, T), without an f·k temporary
        if ctx.rope is not None:
            q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        k_bar, v_bar = causal_additive(scores, torch.cat([k, v], -1), ctx, self.window, self.layer_idx).chunk(2, -1)
        q = q.view(batch, kv_heads, heads // kv_heads, seq, dim)
        gate = torch.sigmoid(torch.linalg.vecdot(q, k_bar[:, :, None]) * dim**-0.5)[..., None]
        y = merge_heads((gate * v_bar[:, :, None]).reshape(batch, heads, seq, dim))
        return self.out(y), (_importance_logits(scores, ctx) if ctx.output_attentions else None)


class CausalFastformer(nn.Module):
    """Fastformer (Wu et al. 2021) made causal: both of its additive poolings become cumulative/windowed.

        q̄_i = Σ_{l∈W(i)} softmax_l(w_q·q_l / √D) q_l        global query seen by position i
        p_l = q̄_l ⊙ k_l
        k̄_i = Σ_{l∈W(i)} softmax_l(w_k·p_l / √D) p_l        global key
        y_i = W_o (k̄_i ⊙ v_i) + q_i                          as in the paper, the query is added back

    with learned per-head vectors w_q, w_k. Each pooling is one scan (two cache slots per layer).
    """

    def __init__(self, d_model: int, n_heads: int, *, window: int | None, layer_idx: int, bias: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.window = window
        self.layer_idx = layer_idx
        self.proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.query_score = nn.Parameter(torch.zeros(n_heads, self.head_dim))
        self.key_score = nn.Parameter(torch.zeros(n_heads, self.head_dim))
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.out.is_residual_projection = True

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = x.shape
        scale = self.head_dim**-0.5
        q, k, v = (t.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2) for t in self.proj(x).chunk(3, -1))
        query_scores = (q * self.query_score[:, None]).sum(-1) * scale
        q_bar = causal_additive(query_scores, q, ctx, self.window, self.layer_idx, slot=0)
        p = q_bar * k
        key_scores = (p * self.key_score[:, None]).sum(-1) * scale
        k_bar = causal_additive(key_scores, p, ctx, self.window, self.layer_idx, slot=1)
        y = self.out(merge_heads(k_bar * v)) + merge_heads(q)
        return y, (_importance_logits(key_scores, ctx) if ctx.output_attentions else None)
