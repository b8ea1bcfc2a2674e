"""Causal softmax attention (MHA/GQA/MQA, RoPE, cache, masks) against loops written from the formulas."""

import math

import pytest
import torch

from attnlab.layers import CausalSelfAttention, MixerContext, RotaryEmbedding, attention_bias_mask


def naive_rope(x, positions, theta=10000.0):
    """Rotate each pair (x_k, x_{k+d/2}) by the angle position · theta^(-2k/d), one element at a time."""
    out = x.clone()
    d = x.shape[-1]
    for b in range(x.shape[0]):
        for t in range(x.shape[2]):
            p = positions[b, t].item()
            for k in range(d // 2):
                a = p * theta ** (-2 * k / d)
                x1, x2 = x[b, :, t, k], x[b, :, t, k + d // 2]
                out[b, :, t, k] = x1 * math.cos(a) - x2 * math.sin(a)
                out[b, :, t, k + d // 2] = x1 * math.sin(a) + x2 * math.cos(a)
    return out


def naive_attention(attn: CausalSelfAttention, x, positions=None):
    """softmax(q·k/√d) v over j ≤ i, per head, with key head h // (H / H_kv): a double loop in fp64."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q = qkv[..., : H * D].view(B, T, H, D).transpose(1, 2)
    k = qkv[..., H * D : H * D + Hkv * D].view(B, T, Hkv, D).transpose(1, 2)
    v = qkv[..., H * D + Hkv * D :].view(B, T, Hkv, D).transpose(1, 2)
    if positions is not None:
        q, k = naive_rope(q, positions), naive_rope(k, positions)
    y = torch.zeros(B, H, T, D, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)
            for i in range(T):
                scores = torch.stack([q[b, h, i] @ k[b, g, j] / math.sqrt(D) for j in range(i + 1)])
                w = scores.softmax(0)
                y[b, h, i] = sum(w[j] * v[b, g, j] for j in range(i + 1))
    y = y.transpose(1, 2).reshape(B, T, H * D)
    return y @ attn.out.weight.T + attn.out.bias


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rope", [False, True])
def test_attention_matches_naive_loop(n_kv_heads, rope):
    attn = CausalSelfAttention(16, 4, n_kv_heads, layer_idx=0).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    positions = torch.arange(7).expand(2, 7)
    ctx = MixerContext(position_ids=positions, rope=RotaryEmbedding(4)(positions) if rope else None)
    ctx.rope = tuple(t.double() for t in ctx.rope) if rope else None
    got, _ = attn(x, ctx)
    want = naive_attention(attn, x, positions if rope else None)
    tol = 1e-6 if rope else 1e-10  # RoPE angles are computed in fp32 by design (bf16-safe, fast)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_explicit_path_returns_normalised_causal_weights():
    attn = CausalSelfAttention(16, 4, 2, layer_idx=0).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    fast, _ = attn(x, MixerContext(position_ids=torch.arange(5)[None]))
    slow, weights = attn(x, MixerContext(position_ids=torch.arange(5)[None], output_attentions=True))
    torch.testing.assert_close(fast, slow)
    assert weights.shape == (1, 4, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 5, dtype=torch.float64))
    assert torch.all(weights.triu(1) == 0)


def test_mask_never_leaves_a_query_without_keys():
    padding = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = attention_bias_mask(padding, 4, 0, torch.device("cpu"))
    assert mask.shape == (2, 1, 4, 4)
    assert mask.any(-1).all()
    # real tokens never see padding or the future
    assert not mask[0, 0, 2, 0] and mask[0, 0, 3, 2] and not mask[0, 0, 2, 3]
    assert attention_bias_mask(None, 4, 0, torch.device("cpu")) is None
    assert attention_bias_mask(None, 1, 9, torch.device("cpu")) is None
