"""Causal softmax attention (MHA/GQA/MQA, RoPE, cache, masks) against loops written from the formulas."""

import pytest
import torch

from attnlab.layers import CausalSelfAttention, MixerContext, RotaryEmbedding, attention_bias_mask
from attnlab.ops.attention.naive import naive_attention, naive_rope


def naive_layer(attn: CausalSelfAttention, x, positions=None):
    """The layer from its weights: projections, then the naive RoPE and attention references, in fp64."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q = qkv[..., : H * D].view(B, T, H, D).transpose(1, 2)
    k = qkv[..., H * D : H * D + Hkv * D].view(B, T, Hkv, D).transpose(1, 2)
    v = qkv[..., H * D + Hkv * D :].view(B, T, Hkv, D).transpose(1, 2)
    if positions is not None:
        q, k = naive_rope(q, positions[:, None]), naive_rope(k, positions[:, None])
    y = naive_attention(q, k, v).transpose(1, 2).reshape(B, T, H * D)
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
    want = naive_layer(attn, x, positions if rope else None)
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
