"""LEAP: the stable cumulative-sum kernels, the mixers and the model against loops written from the math of
the LEAP package description and leap-transformer 1.0."""

import math

import pytest
import torch

import attnlab
from attnlab.errors import ConfigError
from attnlab.layers import MixerContext
from attnlab.layers.leap import CausalFastformer, LeapAttention
from attnlab.models.hf_compat import CACHE_FIELD
from attnlab.ops.leap import additive_attention, window_weights
from attnlab.ops.leap.naive import dense_reference, naive_additive

WINDOWS = [1, 2, 3, 5, 7, 8, 11, 16, 36, 37, 100, None]  # k=1, k ≤ chunk (band), k > chunk (with and
# without a chunk-sized divisor, one or two row groups), k = T, k > T, global


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [4, 64])
def test_kernel_matches_the_naive_loop(window, masked, chunk):
    scores = 3 * torch.randn(2, 3, 37, dtype=torch.float64)
    values = torch.randn(2, 3, 37, 5, dtype=torch.float64)
    mask = (torch.rand(2, 1, 37) > 0.3) if masked else None
    got, _ = additive_attention(scores, values, window, mask, chunk=chunk)
    torch.testing.assert_close(got, naive_additive(scores, values, window, mask), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [1, 3, 4, 6, 7, 8, 11, None])
@pytest.mark.parametrize("masked", [False, True])
def test_kernel_gradients_match_finite_differences(window, masked):
    """The maxes are detached (the result does not depend on them), so autograd must still be exact."""
    scores = (2 * torch.randn(1, 2, 19, dtype=torch.float64)).requires_grad_()
    values = torch.randn(1, 2, 19, 3, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(1, 1, 19) > 0.3) if masked else None
    assert torch.autograd.gradcheck(lambda s, v: additive_attention(s, v, window, mask, chunk=4)[0], (scores, values))


@pytest.mark.parametrize("window", [1, 3, 8, None])
def test_recurrent_steps_equal_the_parallel_form(window):
    """Feeding the tokens in pieces (1 at a time, or 5 then 3 ...) through ``past`` gives the parallel result."""
    scores, values = 4 * torch.randn(2, 30, dtype=torch.float64), torch.randn(2, 30, 3, dtype=torch.float64)
    mask = torch.rand(2, 30) > 0.2
    full, _ = additive_attention(scores, values, window, mask, chunk=4)
    for pieces in ([1] * 30, [5, 3, 1, 1, 12, 8]):
        past, outs, start = None, [], 0
        for size in pieces:
            span = slice(start, start + size)
            out, past = additive_attention(scores[:, span], values[:, span], window, mask[:, span], past, chunk=4)
            outs.append(out)
            start += size
            # the carried state never grows: one running state (global) or the last k-1 tokens (window)
            assert past.length == (1 if window is None else min(window - 1, start))
        torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-12, atol=1e-12)


def test_window_weights_sum_to_one_over_each_window_and_reproduce_the_kernel():
    scores, values = 2 * torch.randn(2, 3, 20, dtype=torch.float64), torch.randn(2, 3, 20, 4, dtype=torch.float64)
    mask = torch.ones(2, 1, 20, dtype=torch.bool)
    mask[0, :, :4] = False  # left padding
    for window in (1, 4, None):
        alpha = window_weights(scores, window, mask)
        i, l = torch.arange(20)[:, None], torch.arange(20)[None, :]
        outside = (l > i) | ((l <= i - window) if window else torch.zeros(20, 20, dtype=torch.bool))
        assert torch.all(alpha[..., outside] == 0) and torch.all(alpha[0, :, :, :4] == 0)
        sums = alpha.sum(-1)
        torch.testing.assert_close(sums[1], torch.ones_like(sums[1]))
        torch.testing.assert_close(sums[0, :, 4:], torch.ones_like(sums[0, :, 4:]))
        got, _ = additive_attention(scores, values, window, mask)
        torch.testing.assert_close((alpha @ values)[:, :, 4:], got[:, :, 4:])


# Stability on 16k tokens. Scores ~ N(0, 300²) overflow exp() in fp32 (and the window difference of the
# package description's cumulative sums cancels). Tolerances: fp32 inputs carry a relative error of
# 2^-24·|s| ≈ 2e-5 into every weight, so outputs (|v| ≲ 4) agree to 1e-4; under bf16 autocast the kernel
# still computes in fp32 and only its bf16 output is rounded (2^-8 relative), so 2e-2 absolute.
LONG = 16384


@pytest.fixture(scope="module")
def long_inputs():
    g = torch.Generator().manual_seed(0)
    scores = 300 * torch.randn(1, 1, LONG, generator=g)
    values = torch.randn(1, 1, LONG, 4, generator=g)
    return scores, values


@pytest.mark.parametrize("window", [1, 64, 999, 1000, None])
def test_stable_on_16k_tokens_in_fp32_and_bf16_autocast(long_inputs, window):
    scores, values = long_inputs
    got, _ = additive_attention(scores, values, window)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), dense_reference(scores, values, window), rtol=0, atol=1e-4)
    s16, v16 = scores.bfloat16(), values.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got16, _ = additive_attention(s16, v16, window)
    assert got16.dtype == torch.bfloat16 and torch.isfinite(got16).all()
    torch.testing.assert_close(got16.double(), dense_reference(s16, v16, window), rtol=0, atol=2e-2)


@pytest.mark.parametrize("window", [1, 2, 5, 8])
def test_band_sums_equal_the_chunked_scan_both_ways(window):
    """Short windows take ``band_sums``: the same sums as ``window_sums``, forwards and (reverse=True, the
    backward's direction) backwards in time, with padding and with given references."""
    from attnlab.ops.leap.scan import NEG, band_sums, window_sums

    m = 5 * torch.randn(2, 3, 29, dtype=torch.float64)
    m[0, :, :4] = NEG  # left padding: empty windows
    zn = torch.randn(2, 3, 29, 6, dtype=torch.float64)
    for reverse in (False, True):
        flip = (lambda t, d: t.flip(d)) if reverse else (lambda t, d: t)
        ref, sums = window_sums(flip(m, -1), flip(zn, -2), window, chunk=4)
        got_ref, got = band_sums(m, zn, window, reverse=reverse)
        torch.testing.assert_close(got_ref, flip(ref, -1), rtol=0, atol=0)
        torch.testing.assert_close(got, flip(sums, -2), rtol=1e-12, atol=1e-12)
        above = flip(ref, -1) + torch.rand_like(ref)  # any reference ≥ the window's max
        _, sums = window_sums(flip(m, -1), flip(zn, -2), window, chunk=4, reference=flip(above, -1))
        torch.testing.assert_close(band_sums(m, zn, window, reference=above, reverse=reverse)[1], flip(sums, -2),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [1, 64, 999, None])
def test_backward_scan_is_stable_and_exact_at_large_score_scales(window):
    """The backward is a second scan, backwards in time (``_AdditiveAttention``): with scores ~ N(0, 300²)
    its fp32 gradients stay finite and agree with autograd through the fp64 dense softmax; under bf16
    autocast they stay finite."""
    g = torch.Generator().manual_seed(1)
    scores, values = 300 * torch.randn(1, 2, 2048, generator=g), torch.randn(1, 2, 2048, 4, generator=g)
    grad = torch.randn(1, 2, 2048, 4, generator=g)
    s, v = scores.clone().requires_grad_(), values.clone().requires_grad_()
    additive_attention(s, v, window)[0].backward(grad)
    s64, v64 = scores.double().requires_grad_(), values.double().requires_grad_()
    dense_reference(s64, v64, window).backward(grad.double())
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=0, atol=1e-4)
    torch.testing.assert_close(v.grad.double(), v64.grad, rtol=0, atol=1e-4)
    s16, v16 = scores.bfloat16().requires_grad_(), values.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = additive_attention(s16, v16, window)
    out.float().backward(grad)
    assert torch.isfinite(s16.grad.float()).all() and torch.isfinite(v16.grad.float()).all()


def test_the_descriptions_exp_then_cumsum_form_breaks_where_ours_does_not(long_inputs):
    """Why the running max: eq. 10 of the LEAP package description, evaluated literally, is inf/NaN on
    these scores."""
    scores, values = long_inputs
    e = scores.exp()[..., None]
    num, den = (e * values).cumsum(-2), e.cumsum(-2)
    k = 64
    naive = (num[..., k:, :] - num[..., :-k, :]) / (den[..., k:, :] - den[..., :-k, :])
    assert not torch.isfinite(naive).all()


# ---------------------------------------------------------------- mixers


def context(length, mask=None):
    return MixerContext(position_ids=torch.arange(length)[None], key_padding_mask=mask)


def naive_leap(mixer: LeapAttention, x):
    """The LEAP mixer from its definition, token by token in fp64."""
    B, T, _ = x.shape
    H, Hk, D = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
    proj = x @ mixer.proj.weight.T + mixer.proj.bias
    q = proj[..., : H * D].view(B, T, H, D)
    f, k, v = proj[..., H * D :].view(B, T, 3, Hk, D).unbind(2)
    y = torch.zeros(B, T, H, D, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hk)
            scores = torch.stack([f[b, l, g] @ k[b, l, g] / math.sqrt(D) for l in range(T)])
            k_bar = naive_additive(scores, k[b, :, g], mixer.window)
            v_bar = naive_additive(scores, v[b, :, g], mixer.window)
            for i in range(T):
                y[b, i, h] = torch.sigmoid(q[b, i, h] @ k_bar[i] / math.sqrt(D)) * v_bar[i]
    return y.reshape(B, T, H * D) @ mixer.out.weight.T + mixer.out.bias


def naive_fastformer(mixer: CausalFastformer, x):
    B, T, d = x.shape
    H, D = mixer.n_heads, mixer.head_dim
    q, k, v = (x @ mixer.proj.weight.T + mixer.proj.bias).view(B, T, 3, H, D).unbind(2)
    u = torch.zeros(B, T, H, D, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            a = torch.stack([mixer.query_score[h] @ q[b, l, h] / math.sqrt(D) for l in range(T)])
            q_bar = naive_additive(a, q[b, :, h], mixer.window)
            p = q_bar * k[b, :, h]
            c = torch.stack([mixer.key_score[h] @ p[l] / math.sqrt(D) for l in range(T)])
            u[b, :, h] = naive_additive(c, p, mixer.window) * v[b, :, h]
    return u.reshape(B, T, d) @ mixer.out.weight.T + mixer.out.bias + q.reshape(B, T, d)


@pytest.mark.parametrize("window", [1, 3, None])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_leap_mixer_matches_its_definition(window, n_kv_heads):
    mixer = LeapAttention(16, 4, n_kv_heads, window=window, layer_idx=0).double()
    torch.nn.init.normal_(mixer.proj.bias)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    got, scores = mixer(x, context(9))
    torch.testing.assert_close(got, naive_leap(mixer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window", [2, None])
def test_fastformer_mixer_matches_its_definition(window):
    mixer = CausalFastformer(16, 4, window=window, layer_idx=0).double()
    torch.nn.init.normal_(mixer.query_score)
    torch.nn.init.normal_(mixer.key_score)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    got, _ = mixer(x, context(9))
    torch.testing.assert_close(got, naive_fastformer(mixer, x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- model

VARIANTS = [
    {},  # windows 4, 8 and a global last layer
    {"use_local_att": False},
    {"window_sizes": [1, 3, None], "n_kv_heads": 2, "pos": "rope"},
    {"mixer": "fastformer"},
]
ids = ["windowed", "global", "k1-gqa-rope", "fastformer"]


def make(**overrides):
    torch.manual_seed(0)
    return attnlab.create_model("leap", "debug", **overrides).eval().double()


@pytest.mark.parametrize("overrides", VARIANTS, ids=ids)
def test_recurrent_logits_equal_parallel_logits_with_left_padding(overrides):
    model = make(**overrides)
    ids_ = torch.randint(1, 256, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :3] = 0
    full = model(ids_, attention_mask=mask, use_cache=False).logits
    cache = model.make_cache()
    steps = [model(ids_[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
    for t in range(6, 20):
        steps.append(model(ids_[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
    assert cache.get_seq_length() == 20
    torch.testing.assert_close(torch.cat(steps, 1)[mask.bool()], full[mask.bool()], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("overrides", VARIANTS[1:], ids=ids[1:])
def test_cached_generation_equals_uncached(overrides):
    model = make(**overrides)
    prompt = torch.randint(1, 256, (2, 5))
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("overrides", VARIANTS[1:], ids=ids[1:])
def test_causal_and_padding_invariant(overrides):
    model = make(**overrides)
    x = torch.randint(1, 256, (1, 16))
    base = model(x).logits
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 256
    torch.testing.assert_close(model(y).logits[:, :9], base[:, :9], rtol=0, atol=1e-12)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 16)], 1).long()
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 4:], base, rtol=1e-10, atol=1e-10)


def test_generation_state_does_not_grow_with_the_context():
    model = make(window_sizes=[4, 8, None])
    cache = model.make_cache()
    model.generate(torch.randint(1, 256, (2, 5)), max_new_tokens=40, do_sample=False, pad_token_id=0,
                   **{CACHE_FIELD: cache})  # generate()'s name for a cache of the caller's: cache from 5.24 on
    shapes = [tuple(layer.states[0].n.shape) for layer in cache.layers]
    assert shapes == [(2, 4, 3, 16), (2, 4, 7, 16), (2, 4, 1, 16)]  # (B, heads, k-1 or 1 state, 2·head_dim)
    assert cache.get_seq_length() == 44


def test_explain_and_output_attentions():
    model = make()
    x = torch.randint(1, 256, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :2] = 0
    out = model(x, attention_mask=mask, output_attentions=True)
    assert [a.shape for a in out.attentions] == [(2, 4, 12)] * 3
    alphas = model.explain(x, attention_mask=mask)
    for alpha, window in zip(alphas, [4, 8, None]):
        assert alpha.shape == (2, 4, 12, 12)
        assert torch.all(alpha[1, :, :, :2] == 0)  # padding gets no weight
        torch.testing.assert_close(alpha[0].sum(-1), torch.ones_like(alpha[0, ..., 0]))
        torch.testing.assert_close(alpha[1, :, 2:].sum(-1), torch.ones_like(alpha[1, :, 2:, 0]))
        assert torch.all(alpha.triu(1) == 0)
        if window is not None:
            assert torch.all(alpha.tril(-window) == 0)


def test_bf16_autocast_trains_without_overflow():
    model = attnlab.create_model("leap", "debug")
    x = torch.randint(0, 256, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_defaults_follow_leap_transformer():
    config = attnlab.build_config("leap", "paper")
    assert config.layer_windows == [4, 8, 16, 32, 64, None]
    assert config.dropout == 0.1 and config.pos == "learned" and config.tie_word_embeddings
    assert attnlab.build_config("leap", "debug", use_local_att=False).layer_windows == [None] * 3
    assert attnlab.build_config("leap", "debug", window_sizes=[2, None, 7]).layer_windows == [2, None, 7]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mixer": "softmax"}, "mixer must be one of"),
        ({"window_sizes": [4, None]}, "one entry per layer"),
        ({"window_sizes": [4, 0, None]}, "integers >= 1"),
        ({"window_sizes": [4, 8, None], "use_local_att": False}, "use_local_att is false"),
        ({"mixer": "fastformer", "n_kv_heads": 2}, "n_kv_heads must equal n_heads"),
        ({"mixer": "fastformer", "pos": "rope"}, "RoPE"),
    ],
)
def test_impossible_configs_raise_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        attnlab.create_model("leap", "debug", **overrides)
