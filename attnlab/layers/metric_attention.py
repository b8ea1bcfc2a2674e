"""Metric attention: softmax over −α_h · d(q_i, k_j) for a distance d instead of the dot product.

Every supported distance expands into a dot product plus terms that depend on the query or the key alone:

    L2²        ‖q − k‖²          = ‖q‖² + ‖k‖² − 2 q·k
    maha_diag  Σ_c m_c (q_c − k_c)² = Σ m q² + Σ m k² − 2 (m⊙q)·k
    cosine     1 − q̂·k̂

A query-only term is constant along the softmax row and cancels, so the weights are

    softmax_j( q'_i · k'_j + b_j )   with   q' = 2α m⊙q (L2²: m = 1),  b_j = −α Σ m k_j²;   cosine: q' = α q̂, k' = k̂

which is ``scaled_dot_product_attention`` with the key bias ``b`` passed as a float ``attn_mask``: no N×N×d
tensor is ever built. α_h > 0 is learned per head (stored as log α).

Ball pruning gives head h an origin o_h and radius r_h in the metric's own coordinates φ(k) (k, √m⊙k or k̂);
key j is dropped for head h when u = r_h − ‖φ(k_j) − o_h‖ ≤ 0. Inside, the key's weight is multiplied by the
soft edge 1 − exp(−u / τ) (τ = ``ball_softness``), which is 0 at the boundary and → 1 deep inside: the mask is
continuous in r_h and o_h, so both learn by gradient descent. A query always keeps its own position whatever
the ball says, so no row of the softmax is ever empty (never NaN) even when the ball excludes every key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .attention import merge_heads, split_heads
from .context import MixerContext
from .rotary import RotaryEmbedding, apply_rotary

METRICS = ("l2", "cosine", "maha_diag")

# Smallest soft-edge argument: keeps log(1 − e^(−u/τ)) and its gradient finite for keys right on the boundary.
_MIN_EDGE = 1e-6


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
        if self.metric == "cosine":
            return F.normalize(x, dim=-1)
        if self.metric == "maha_diag":
            return x * self.maha().sqrt()[:, None].to(x.dtype)
        return x

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d(a, b) along the last axis without α: ‖·‖² for l2/maha_diag (in φ coordinates), 1 − cos for cosine."""
        ea, eb = self.embed(a), self.embed(b)
        if self.metric == "cosine":
            return 1 - (ea * eb).sum(-1)
        return (ea - eb).pow(2).sum(-1)

    def scores_terms(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q', k', key bias (B, H, 1, S) or None) such that −α d(q_i, k_j) = q'_i·k'_j + b_j + const(i)."""
        alpha = self.alpha().to(q.dtype)[:, None, None]  # (H, 1, 1)
        if self.metric == "cosine":
            return alpha * F.normalize(q, dim=-1), F.normalize(k, dim=-1), None
        m = self.maha()
        if m is None:
            k_sq = self._expand_heads(_at_least_fp32(k).pow(2).sum(-1))  # (B, H, S)
            q_scaled = 2 * alpha * q
        else:
            k_sq = (self._expand_heads(_at_least_fp32(k).pow(2)) * m[:, None]).sum(-1)
            q_scaled = 2 * alpha * q * m.to(q.dtype)[:, None]
        bias = -self.alpha()[:, None] * k_sq  # fp32 (fp64 stays fp64): the one term that can be large
        return q_scaled, k, bias[:, :, None]

    def ball_bias(self, k: torch.Tensor) -> torch.Tensor:
        """log of the soft ball edge per head and key, (B, H, 1, S): −inf outside, log(1 − e^(−u/τ)) inside."""
        coords = self.embed(self._expand_heads(k))  # (B, H, S, hd)
        radius = self.radius.to(k.dtype)[:, None]
        u = radius - (coords - self.origin.to(k.dtype)[:, None]).norm(dim=-1)
        inside = u > 0
        edge = torch.log(-torch.expm1(-u.clamp(min=_MIN_EDGE) / self.ball_softness))
        return edge.masked_fill(~inside, float("-inf"))[:, :, None]

    # --- forward --------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = split_heads(self.qkv(x), self.n_heads, self.n_kv_heads, self.head_dim)
        if self.rotary is not None:
            cos, sin = self.rotary(ctx.position_ids)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        self.ti_penalty = self.triangle_penalty(q, k) if self.training and self.ti_samples > 0 else None
        if ctx.cache is not None:
            k, v = ctx.cache.update(k, v, self.cache_index)

        q_s, k_s, mask = self.logits_mask(q, k, ctx)
        weights = None
        if ctx.output_attentions:
            v_h = self._expand_heads(v)
            weights = (q_s @ self._expand_heads(k_s).transpose(-2, -1) + mask).softmax(dim=-1)
            y = weights @ v_h
        else:
            y = F.scaled_dot_product_attention(
                q_s,
                k_s,
                v,
                attn_mask=mask,
                dropout_p=self.attn_drop if self.training else 0.0,
                scale=1.0,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        y = merge_heads(y)
        return self.proj_drop(self.out(y)), weights

    def logits_mask(
        self, q: torch.Tensor, k: torch.Tensor, ctx: MixerContext
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q', k' and the float mask (B, H, T, S): key bias + ball edge where allowed, −inf elsewhere."""
        q_len, kv_len = q.shape[-2], k.shape[-2]
        q_s, k_s, bias = self.scores_terms(q, k)
        q_index = torch.arange(q_len, device=q.device)[:, None] + (kv_len - q_len)
        k_index = torch.arange(kv_len, device=q.device)[None, :]
        allowed = ctx.attn_mask if ctx.attn_mask is not None else (k_index <= q_index)[None, None]
        if self.use_balls:
            # The query's own key is exempt from its ball, so every row keeps at least one finite entry.
            ball = self.ball_bias(k).masked_fill((k_index == q_index)[None, None], 0.0)
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
        keys = self._expand_heads(k)
        qa, kb, kc = q[:, :, a], keys[:, :, b], keys[:, :, c]
        gap = self.distance(qa, kc) - self.distance(qa, kb) - self.distance(kb, kc)
        return F.relu(gap).mean()

    def _expand_heads(self, t: torch.Tensor) -> torch.Tensor:
        """Repeat key-head tensors (B, Hkv, ...) to the query heads (B, H, ...)."""
        groups = self.n_heads // t.shape[1]
        return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32, fp32/fp64 unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
