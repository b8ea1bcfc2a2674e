"""Metric attention: softmax over −α_h · d(q_i, k_j) for a distance d instead of the dot product.

The distances (l2, cosine, maha_diag) expand into a dot product plus a key bias (``attnlab/ops/metric/``), so
the layer is one ``attend`` call with that bias as a float mask: no N×N×d tensor is ever built. α_h > 0 is
learned per head (stored as log α).

Ball pruning gives head h an origin o_h and radius r_h in the metric's own coordinates; keys outside the
ball are dropped for that head, keys inside weighted by a soft edge that is 0 at the boundary and → 1 deep
inside (τ = ``ball_softness``), so radius and origin learn by gradient descent. A query always keeps its own
position whatever the ball says, so no row of the softmax is ever empty (never NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..ops.metric.scores import METRICS, ball_log_edge, coordinates, dot_product_terms
from ..ops.metric.scores import distance as metric_distance
from .attention import attend, merge_heads, repeat_kv, split_heads
from .context import MixerContext
from .masks import causal_mask, own_key_mask
from .rotary import RotaryEmbedding, apply_rotary


class MetricAttention(nn.Module):
    """Causal multi-head metric attention with ``n_kv_heads`` key/value heads (n_heads: MHA, 1: MQA).

    Keys and values are cached raw (before normalisation or ball tests) in the generation cache at
    ``cache_index``; the key terms are recomputed over the whole cache each step, which costs O(S·d) like the
    attention itself.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        *,
        cache_index: int,
        metric: str = "l2",
        alpha_init: float = 1.0,
        learn_alpha: bool = True,
        maha_init: float = 1.0,
        use_balls: bool = False,
        radius_init: float = 3.0,
        learn_radius: bool = True,
        origin_init_scale: float = 0.0,
        ball_softness: float = 1.0,
        ti_samples: int = 0,
        rope_theta: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.cache_index = cache_index
        self.metric = metric
        self.attn_drop = attn_drop
        self.alpha_init, self.maha_init = alpha_init, maha_init
        self.radius_init, self.origin_init_scale = radius_init, origin_init_scale
        self.ball_softness = ball_softness
        q_dim, kv_dim = n_heads * self.head_dim, n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        self.out = nn.Linear(q_dim, d_model, bias=bias)
        self.out.is_residual_projection = True
        self.proj_drop = nn.Dropout(proj_drop)
        self.rotary = RotaryEmbedding(self.head_dim, rope_theta) if rope_theta is not None else None

        self.log_alpha = nn.Parameter(torch.empty(n_heads), requires_grad=learn_alpha)
        self.log_maha = nn.Parameter(torch.empty(n_heads, self.head_dim)) if metric == "maha_diag" else None
        self.use_balls = use_balls
        if use_balls:
            self.radius = nn.Parameter(torch.empty(n_heads), requires_grad=learn_radius)
            self.origin = nn.Parameter(torch.empty(n_heads, self.head_dim))
        self.reset_metric_parameters()
        self.ti_samples = ti_samples
        self.ti_penalty: torch.Tensor | None = None  # set by each training forward when ti_samples > 0

    @torch.no_grad()
    def reset_metric_parameters(self) -> None:
        """α, the Mahalanobis diagonal, radius and origin from their ``*_init`` settings."""
        init.constant_(self.log_alpha, math.log(self.alpha_init))
        if self.log_maha is not None:
            init.constant_(self.log_maha, math.log(self.maha_init))
        if self.use_balls:
            init.constant_(self.radius, self.radius_init)
            if self.origin_init_scale > 0:
                init.normal_(self.origin, std=self.origin_init_scale)
            else:
                init.zeros_(self.origin)

    # --- geometry -------------------------------------------------------------------------------------------

    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def maha(self) -> torch.Tensor | None:
        return self.log_maha.exp() if self.log_maha is not None else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): coordinates in which the metric is Euclidean, for x of shape (B, H, T, hd) (per-head m)."""
        return coordinates(x, self.metric, self.maha())

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d(a, b) along the last axis without α: ‖·‖² for l2/maha_diag (in φ coordinates), 1 − cos for cosine."""
        return metric_distance(a, b, self.metric, self.maha())

    def scores_terms(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q', k', key bias (B, H, 1, S) or None) such that −α d(q_i, k_j) = q'_i·k'_j + b_j + const(i)."""
        return dot_product_terms(q, k, self.alpha(), self.metric, self.maha())

    def ball_bias(self, k: torch.Tensor) -> torch.Tensor:
        """log of the soft ball edge per head and key, (B, H, 1, S): −inf outside, log(1 − e^(−u/τ)) inside."""
        return ball_log_edge(self.embed(repeat_kv(k, self.n_heads)), self.origin, self.radius, self.ball_softness)

    def ball_membership(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        """Which keys of ``x`` lie inside each head's ball, (batch, heads, seq) boolean: what pruning keeps."""
        _, k, _ = split_heads(self.qkv(x), self.n_heads, self.n_kv_heads, self.head_dim)
        if self.rotary is not None:
            k = apply_rotary(k, *self.rotary(ctx.position_ids))
        return torch.isfinite(self.ball_bias(k))[:, :, 0]

    # --- forward --------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = split_heads(self.qkv(x), self.n_heads, self.n_kv_heads, self.head_dim)
        if self.rotary is not None:
            cos, sin = self.rotary(ctx.position_ids)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        penalty = self.triangle_penalty(q, k) if self.training and self.ti_samples > 0 else None
        # The forward's own penalty, kept when activation checkpointing recomputes the block (no second copy).
        self.ti_penalty = ctx.once((self, "ti_penalty"), lambda: penalty)
        if ctx.cache is not None:
            k, v = ctx.cache.update(k, v, self.cache_index)

        q_s, k_s, mask = self.logits_mask(q, k, ctx)
        y, weights = attend(q_s, k_s, v, ctx, mask=mask, scale=1.0, dropout=self.attn_drop if self.training else 0.0)
        y = merge_heads(y)
        return self.proj_drop(self.out(y)), weights

    def logits_mask(
        self, q: torch.Tensor, k: torch.Tensor, ctx: MixerContext
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q', k' and the float mask (B, H, T, S): key bias + ball edge where allowed, −inf elsewhere."""
        q_len, kv_len = q.shape[-2], k.shape[-2]
        q_s, k_s, bias = self.scores_terms(q, k)
        allowed = ctx.attn_mask if ctx.attn_mask is not None else causal_mask(q_len, kv_len, q.device)[None, None]
        if self.use_balls:
            # The query's own key is exempt from its ball, so every row keeps at least one finite entry.
            ball = self.ball_bias(k).masked_fill(own_key_mask(q_len, kv_len, q.device)[None, None], 0.0)
            bias = ball if bias is None else bias + ball
        if bias is None:
            bias = q.new_zeros(())
        return q_s, k_s, bias.masked_fill(~allowed, float("-inf")).to(q.dtype)

    def triangle_penalty(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Mean hinge relu(d(q_a, k_c) − d(q_a, k_b) − d(k_b, k_c)) over ``ti_samples`` random position triples.

        The triples use the distances attention actually compares (query to key) plus one key-to-key leg, so the
        penalty pushes the learned geometry towards a true metric where it matters.
        """
        seq = q.shape[-2]
        a, b, c = torch.randint(0, seq, (3, self.ti_samples), device=q.device)
        keys = repeat_kv(k, self.n_heads)
        qa, kb, kc = q[:, :, a], keys[:, :, b], keys[:, :, c]
        gap = self.distance(qa, kc) - self.distance(qa, kb) - self.distance(kb, kc)
        return F.relu(gap).mean()
