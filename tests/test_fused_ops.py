"""The hand-written forward/backward pairs of the shared layers against the plain formulas they replace:
RMSNorm, RoPE, SwiGLU, the oneDNN dense layer, the CPU dropout and the block-wise softmax attention of LSW."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlab
from attnlab.layers.ffn import SwiGLU, swiglu
from attnlab.layers.norms import RMSNorm, build_norm, rms_norm
from attnlab.layers.rotary import RotaryEmbedding, apply_rotary, rotate_half
from attnlab.ops import linear as fast_linear
from attnlab.ops.attention.blocks import KeyBlock, Registers, block_attention, supported
from attnlab.ops.cpu_layers import use_fast_cpu_layers
from attnlab.ops.dropout import LANES, Dropout, dropout, keep_mask


def f64(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


# ----------------------------------------------------------------------------------------- RMSNorm
def test_rms_norm_is_the_formula_and_its_gradient_is_exact():
    x, w = f64(3, 5, 16), f64(16)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(rms_norm(x, w, 1e-5), want, rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))


def test_rms_norm_module_keeps_torchs_parameters_and_dtypes():
    norm = build_norm("rmsnorm", 8, 1e-6)
    assert isinstance(norm, RMSNorm) and isinstance(norm, nn.RMSNorm)
    assert list(norm.state_dict()) == ["weight"]
    x = torch.randn(4, 8)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (8,), norm.weight, 1e-6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.bfloat16()).dtype == torch.bfloat16 and norm(x).dtype == torch.float32


# -------------------------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("transposed", [False, True])
def test_rotary_equals_the_rotate_half_formula_with_any_angles(transposed):
    """General cos/sin (not the duplicated halves RoPE gives), on a (B, T, H, D) view as split_heads makes."""
    x = f64(2, 5, 3, 8).transpose(1, 2) if transposed else f64(2, 3, 5, 8)
    cos, sin = f64(2, 5, 8, grad=False), f64(2, 5, 8, grad=False)
    want = x * cos[:, None] + rotate_half(x) * sin[:, None]
    torch.testing.assert_close(apply_rotary(x, cos, sin), want, rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda a: apply_rotary(a, cos, sin), (x,))


def test_rotary_keeps_a_gradient_for_angles_that_want_one():
    x, cos, sin = f64(1, 2, 3, 4), f64(1, 3, 4), f64(1, 3, 4)
    assert torch.autograd.gradcheck(apply_rotary, (x, cos, sin))


def test_rotary_of_real_positions_is_a_rotation():
    cos, sin = RotaryEmbedding(8)(torch.arange(6)[None])
    x = torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


# ------------------------------------------------------------------------------------------ SwiGLU
def test_swiglu_is_silu_gate_times_up_with_an_exact_gradient():
    gate_up = f64(3, 4, 10)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(swiglu(gate_up), F.silu(gate) * up, rtol=0, atol=0)
    assert torch.autograd.gradcheck(swiglu, (gate_up,))
    ffn = SwiGLU(6, 5).double()
    assert set(ffn.state_dict()) == {"gate_up.weight", "down.weight"}


# -------------------------------------------------------------------------------------------- GELU
def test_gelu_tanh_is_torchs_tanh_gelu_with_an_exact_gradient():
    from attnlab.layers.ffn import gelu_tanh

    x = (4 * torch.randn(40, 6, dtype=torch.float64)).requires_grad_()
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(gelu_tanh, (x,))
    far = torch.tensor([-80.0, 80.0], requires_grad=True)
    gelu_tanh(far).sum().backward()
    assert torch.equal(far.grad, torch.tensor([0.0, 1.0]))
    low = torch.randn(5, dtype=torch.bfloat16)
    assert torch.equal(gelu_tanh(low), F.gelu(low, approximate="tanh"))  # reduced precision: torch's own


# ------------------------------------------------------------------------------------------ linear
@pytest.mark.skipif(fast_linear._ONEDNN is None or not torch.backends.mkldnn.is_available(), reason="no oneDNN")
@pytest.mark.parametrize("shape", [(2, 7, 12), (5, 12)])
@pytest.mark.parametrize("out_features", [3, 20])
def test_onednn_linear_matches_fp64_forward_and_backward(monkeypatch, shape, out_features):
    monkeypatch.setattr(fast_linear, "MIN_WEIGHTS", 0)  # these tiny layers would otherwise take F.linear
    x = torch.randn(*shape, requires_grad=True)
    layer = fast_linear.Linear(12, out_features)
    old = fast_linear._backend
    fast_linear.set_backend("onednn")
    try:
        y = layer(x)
        g = torch.randn_like(y)
        y.backward(g)
    finally:
        fast_linear.set_backend(old)
    ref_layer = nn.Linear(12, out_features).double()
    ref_layer.load_state_dict(layer.state_dict())
    xd = x.detach().double().requires_grad_()
    yd = ref_layer(xd)
    yd.backward(g.double())
    torch.testing.assert_close(y.double(), yd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad.double(), ref_layer.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad.double(), ref_layer.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(fast_linear._ONEDNN is None or not torch.backends.mkldnn.is_available(), reason="no oneDNN")
def test_onednn_linear_takes_strided_inputs_and_gradients(monkeypatch):
    """A column slice as input, and two layers whose outputs are concatenated (each gets a strided half of the
    gradient): the values and gradients of F.linear. (oneDNN's kernels for such strides were 600× slower,
    hence the copies to contiguous inside; the bench catches the speed, this the values.)"""
    monkeypatch.setattr(fast_linear, "MIN_WEIGHTS", 0)
    wide = torch.randn(6, 40, requires_grad=True)
    first, second = fast_linear.Linear(16, 8), fast_linear.Linear(16, 8)
    old = fast_linear._backend
    fast_linear.set_backend("onednn")
    try:
        y = torch.cat([first(wide[:, :16]), second(wide[:, 20:36])], dim=-1)
        g = torch.randn_like(y)
        y.backward(g)
    finally:
        fast_linear.set_backend(old)
    ref_wide = wide.detach().clone().requires_grad_()
    w1, w2 = (layer.weight.detach().clone().requires_grad_() for layer in (first, second))
    ref = torch.cat([F.linear(ref_wide[:, :16], w1, first.bias), F.linear(ref_wide[:, 20:36], w2, second.bias)], -1)
    ref.backward(g)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(wide.grad, ref_wide.grad)
    torch.testing.assert_close(first.weight.grad, w1.grad)
    torch.testing.assert_close(second.weight.grad, w2.grad)


def test_linear_backend_switch_and_fallbacks():
    with pytest.raises(ValueError, match="linear backend"):
        fast_linear.set_backend("mkl")
    old = fast_linear._backend
    try:
        fast_linear.set_backend("torch")
        assert fast_linear.backend() == "torch"
    finally:
        fast_linear.set_backend(old)
    x, w = f64(2, 3), f64(4, 3)
    assert torch.equal(fast_linear.linear(x, w), F.linear(x, w))  # fp64 always takes F.linear
    assert not fast_linear._routed(torch.randn(64, 32), torch.randn(96, 32))  # a tiny layer: F.linear
    if fast_linear.backend() == "onednn":  # the route depends on the layer, not on how many rows it gets
        assert fast_linear._routed(torch.randn(1, 128), torch.randn(512, 128))


def test_models_route_their_dense_layers_and_keep_their_state_dicts(tmp_path):
    torch.manual_seed(0)
    model = attnlab.create_model("gpt", "debug")
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, fast_linear.Linear) and isinstance(model.lm_head, nn.Linear)
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path)
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


# -------------------------------------------------------------------------------- block attention
def dense(q, q_reg, k_reg, v_reg, blocks, scale):
    """One softmax over [registers; every block] with an explicit mask, in fp64."""
    scores = [q_reg @ k_reg.transpose(-1, -2) * scale]
    values = [v_reg.expand(q.shape[0], -1, -1, -1)]
    for keys, vals, visible in blocks:
        scores.append((q @ keys.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf")))
        values.append(vals)
    return torch.cat(scores, -1).softmax(-1) @ torch.cat(values, 2)


@pytest.mark.skipif(not supported(torch.zeros(1)), reason="no CPU flash kernel in this torch")
@pytest.mark.parametrize("padded", [False, True])
def test_block_attention_equals_one_masked_softmax(padded):
    B, H, T, M, R, D = 2, 3, 9, 5, 2, 4
    q, q_reg, k_reg, v_reg = f64(B, H, T, D), f64(B, H, T, D), f64(H, R, D), f64(H, R, D)
    k_mem, v_mem, k_seg, v_seg = f64(B, H, M, D), f64(B, H, M, D), f64(B, H, T, D), f64(B, H, T, D)
    slots = torch.ones(B, M, dtype=torch.bool)
    slots[0, 1] = False
    slots[1] = False  # a row with no memory at all: that block must not count
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    segment = causal.expand(B, 1, T, T).clone()
    if padded:
        segment[0, :, :, :3] = False
        segment |= torch.eye(T, dtype=torch.bool)
    bias = lambda visible: torch.zeros(visible.shape, dtype=torch.float64).masked_fill(~visible, -math.inf)
    memory_visible = slots[:, None, None, :]
    blocks = [KeyBlock(k_seg, v_seg, causal=not padded, bias=bias(segment) if padded else None),
              KeyBlock(k_mem, v_mem, bias=bias(memory_visible), has_keys=memory_visible.any(-1))]
    scale = D**-0.5
    got = block_attention(q, blocks, scale=scale, registers=Registers(q_reg, k_reg, v_reg))
    want = dense(q, q_reg, k_reg, v_reg, [(k_seg, v_seg, segment), (k_mem, v_mem, memory_visible)], scale)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = (q, q_reg, k_reg, v_reg, k_mem, v_mem, k_seg, v_seg)
    grad = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 2}, {"pos": "learned"}, {"n_registers": 0}])
def test_lsw_block_path_equals_the_one_call_path(monkeypatch, overrides):
    """Logits and gradients of the block-wise CPU path and the dense-mask SDPA path, with memory, padding
    and documents, in fp64."""
    import attnlab.layers.lsw_attention as lsw

    def run(fast: bool):
        monkeypatch.setattr(lsw, "supported", (lambda q, dropout=0.0: fast and supported(q, dropout)))
        torch.manual_seed(0)
        model = attnlab.create_model("lsw", "debug", mem_len=6, **overrides).double().train()
        memory = model.make_cache()
        ids = torch.randint(0, 256, (2, 8))
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, :2] = 0
        docs = torch.tensor([[0] * 5 + [1] * 3, [0] * 8])
        model(ids, cache=memory, use_cache=True, document_ids=docs)
        out = model(ids.flip(-1), attention_mask=torch.cat([torch.ones_like(mask), mask], 1), cache=memory,
                    use_cache=True, labels=ids, document_ids=docs)
        out.loss.backward()
        return out.logits.detach(), [p.grad for p in model.parameters()]

    (fast_logits, fast_grads), (slow_logits, slow_grads) = run(True), run(False)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-10, atol=1e-10)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------ chunked cross-entropy
@pytest.mark.parametrize("divisor", [None, 7])
def test_chunked_cross_entropy_equals_cross_entropy_with_its_gradient(divisor):
    from attnlab.losses import chunked_cross_entropy

    logits = f64(11, 9)
    targets = torch.randint(0, 9, (11,))
    targets[[2, 5]] = -100
    want = F.cross_entropy(logits, targets, ignore_index=-100, reduction="mean" if divisor is None else "sum")
    want = want if divisor is None else want / divisor
    got = chunked_cross_entropy(logits, targets, chunk_rows=4, divisor=divisor)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x: chunked_cross_entropy(x, targets, chunk_rows=3, divisor=divisor), (logits,))
    bf16 = logits.detach().bfloat16().requires_grad_()
    loss = chunked_cross_entropy(bf16, targets, chunk_rows=5, divisor=divisor)
    loss.backward()
    assert loss.dtype == torch.float32 and bf16.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="chunk_rows must be positive"):
        chunked_cross_entropy(logits, targets, chunk_rows=0)


def test_a_model_with_a_chunked_loss_trains_the_same():
    torch.manual_seed(0)
    model = attnlab.create_model("gpt", "debug").double()
    ids = torch.randint(0, 256, (2, 12))
    plain = model(ids, labels=ids).loss
    model.loss_chunk_rows = 5
    torch.testing.assert_close(model(ids, labels=ids).loss, plain, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------------------- dropout
def test_dropout_keeps_each_element_with_probability_one_minus_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    for p in (0.1, 0.5, 0.9):
        y = dropout(x, p)
        kept = (y != 0).float().mean().item()
        assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / x.numel())  # 5 standard errors
        scale = LANES / (LANES - round(p * LANES))
        assert y.unique().tolist() == pytest.approx([0.0, scale])
        assert abs(y.mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / x.numel())


def test_dropout_lanes_are_independent_and_uniform():
    """Each 16-bit lane of the random words (also the top one, holding the sign bit) drops at rate p."""
    torch.manual_seed(1)
    mask = keep_mask(torch.Size([4 * 100_000]), round(0.25 * LANES)).view(-1, 4).float()
    assert torch.allclose(mask.mean(0), torch.full((4,), 0.75), atol=5 * math.sqrt(0.75 * 0.25 / 100_000))
    pairs = (mask[:, 0] * mask[:, 3]).mean().item()  # independent lanes: P(both kept) = 0.75²
    assert abs(pairs - 0.5625) < 0.01


def test_dropout_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(8, 64, requires_grad=True)
    y = dropout(x, 0.3)
    grad = torch.randn_like(y)
    y.backward(grad)
    ratio = torch.where(x.detach() != 0, y.detach() / x.detach(), torch.zeros_like(y))
    torch.testing.assert_close(x.grad, grad * ratio)


def test_dropout_is_reproducible_from_the_seed_and_off_in_eval():
    x = torch.randn(5, 32)
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.2))
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), F.dropout(x, 1.0))  # p rounding to 1 (or 0) takes F.dropout


def test_models_route_their_dropouts_and_keep_their_state_dict():
    model = attnlab.create_model("leap", "debug", dropout=0.1)
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Dropout)}
    assert kinds == {Dropout}
    plain = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    before = plain.state_dict()
    use_fast_cpu_layers(plain)
    assert type(plain[0]) is fast_linear.Linear and type(plain[1]) is Dropout
    assert plain.state_dict().keys() == before.keys()
