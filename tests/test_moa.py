"""MoA metric LM: every mechanism against a slow reference written from the formulas (fp64 loops)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig

import attnlab
from attnlab.errors import ConfigError
from attnlab.summary import count_parameters, describe
from attnlab.layers.context import MixerContext
from attnlab.layers.hyperffn import HyperFFN, LowRankFFN
from attnlab.layers.metric_attention import MetricAttention
from attnlab.layers.moa_heads import LocalConvHead, Routing
from attnlab.layers.ffn import SwiGLU
from attnlab.models.hf_compat import output_cache
from attnlab.models.moa import MoACache, MoAMetricConfig, MoAMetricForCausalLM
from attnlab.layers.moa_block import DropPath
from attnlab.ops.metric.naive import naive_metric_attention

CARD_JSON = Path(__file__).parent / "data" / "moa_seed_config.json"  # the MoA-100M model card's example
METRICS = ["l2", "cosine", "maha_diag"]


def ctx_for(seq, batch=2, **kw):
    return MixerContext(position_ids=torch.arange(seq).expand(batch, seq), **kw)


def make_metric(metric, n_kv_heads=4, use_balls=False, radius=None, **kw):
    attn = MetricAttention(16, 4, n_kv_heads, cache_index=0, metric=metric, use_balls=use_balls, **kw).double()
    with torch.no_grad():  # non-trivial geometry: per-head α, Mahalanobis diagonal, origins and radii
        attn.log_alpha.copy_(torch.randn(4) * 0.3)
        if attn.log_maha is not None:
            attn.log_maha.copy_(torch.randn(4, 4) * 0.5)
        if use_balls:
            attn.origin.copy_(torch.randn(4, 4) * 0.3)
            attn.radius.copy_(torch.tensor([0.8, 1.2, 1.5, 2.5]) if radius is None else torch.full((4,), radius))
    return attn


def naive_metric_layer(attn: MetricAttention, x: torch.Tensor) -> torch.Tensor:
    """The layer from its weights: projections around the pairwise-distance reference, in fp64."""
    B, T, _ = x.shape
    H, G, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q = qkv[..., : H * D].view(B, T, H, D).transpose(1, 2)
    k = qkv[..., H * D : (H + G) * D].view(B, T, G, D).transpose(1, 2)
    v = qkv[..., (H + G) * D :].view(B, T, G, D).transpose(1, 2)
    balls = {}
    if attn.use_balls:
        balls = dict(origin=attn.origin, radius=attn.radius, ball_softness=attn.ball_softness)
    maha = attn.log_maha.exp() if attn.log_maha is not None else None
    y = naive_metric_attention(q, k, v, alpha=attn.log_alpha.exp(), metric=attn.metric, maha=maha, **balls)
    return y.transpose(1, 2).reshape(B, T, H * D) @ attn.out.weight.T + attn.out.bias


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n_kv_heads", [4, 1], ids=["mha", "mqa"])
@pytest.mark.parametrize("use_balls", [False, True], ids=["no-balls", "balls"])
def test_metric_attention_matches_pairwise_distance_loop(metric, n_kv_heads, use_balls):
    attn = make_metric(metric, n_kv_heads, use_balls)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    got, _ = attn(x, ctx_for(7))
    torch.testing.assert_close(got, naive_metric_layer(attn, x), rtol=1e-10, atol=1e-10)


def test_balls_really_prune_some_keys():
    """The reference test above is only meaningful if some keys fall outside some balls."""
    attn = make_metric("l2", use_balls=True)
    qkv = attn.qkv(torch.randn(2, 7, 16, dtype=torch.float64))
    k = qkv[..., 16:32].view(2, 7, 4, 4).transpose(1, 2)
    outside = torch.isinf(attn.ball_bias(k))
    assert 0 < outside.float().mean() < 1


@pytest.mark.parametrize("metric", METRICS)
def test_empty_ball_keeps_only_the_query_itself_and_never_nan(metric):
    attn = make_metric(metric, use_balls=True, radius=-1.0)
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    y, weights = attn(x, ctx_for(6, output_attentions=True))
    torch.testing.assert_close(weights, torch.eye(6, dtype=torch.float64).expand(2, 4, 6, 6))
    v = attn.qkv(x)[..., 32:]
    torch.testing.assert_close(y, attn.out(v))
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in attn.parameters() if p.grad is not None)


def test_ball_radius_and_origin_learn_through_the_soft_edge():
    attn = make_metric("l2", use_balls=True)
    y, _ = attn(torch.randn(2, 7, 16, dtype=torch.float64), ctx_for(7))
    y.pow(2).sum().backward()
    for p in (attn.radius, attn.origin, attn.log_alpha):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("metric", METRICS)
def test_fast_path_equals_explicit_weights(metric):
    attn = make_metric(metric, n_kv_heads=2, use_balls=True)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    fast, _ = attn(x, ctx_for(6))
    slow, weights = attn(x, ctx_for(6, output_attentions=True))
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6, dtype=torch.float64))
    assert torch.all(weights.triu(1) == 0)


@pytest.mark.parametrize("metric", METRICS)
def test_triangle_penalty_is_the_hinge_on_sampled_triples(metric):
    attn = make_metric(metric, n_kv_heads=2, ti_samples=50)
    q, k = torch.randn(2, 4, 9, 4, dtype=torch.float64), torch.randn(2, 2, 9, 4, dtype=torch.float64)
    torch.manual_seed(3)
    got = attn.triangle_penalty(q, k)
    torch.manual_seed(3)
    a, b, c = torch.randint(0, 9, (3, 50))
    m = attn.log_maha.exp() if attn.log_maha is not None else torch.ones(4, 4, dtype=torch.float64)

    def d(h, x, y):
        if metric == "cosine":
            return 1 - x @ y / (x.norm() * y.norm())
        return (m[h] * (x - y) ** 2).sum()

    want = torch.stack([
        F.relu(d(h, q[n, h, a[s]], k[n, h // 2, c[s]]) - d(h, q[n, h, a[s]], k[n, h // 2, b[s]])
               - d(h, k[n, h // 2, b[s]], k[n, h // 2, c[s]]))
        for n in range(2) for h in range(4) for s in range(50)
    ]).mean()
    torch.testing.assert_close(got, want)
    assert got > 0  # squared distances violate the triangle inequality, so the penalty has work to do


def test_model_loss_adds_weighted_triangle_penalty_only_in_training():
    torch.manual_seed(0)
    model = attnlab.create_model("moa", "debug", ti_reg_weight=0.5).double().train()
    x = torch.randint(0, 256, (2, 12))
    torch.manual_seed(5)
    loss = model(x, labels=x).loss
    penalty = model.ti_penalty()
    ce = F.cross_entropy(model(x).logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ce + 0.5 * penalty)
    assert penalty > 0
    eval_loss = model.eval()(x, labels=x).loss
    torch.testing.assert_close(eval_loss, ce)
    assert model.ti_penalty() is None


def naive_causal_depthwise_conv(weight, bias, x):
    """y[b, t, c] = bias[c] + Σ_s w[c, s] · x[b, t − (K−1) + s, c], zero before the start."""
    B, T, C = x.shape
    K = weight.shape[-1]
    y = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            for c in range(C):
                y[b, t, c] = bias[c] + sum(weight[c, 0, s] * x[b, t - K + 1 + s, c] for s in range(K) if t - K + 1 + s >= 0)
    return y


def test_local_conv_head_matches_loop_and_is_causal():
    head = LocalConvHead(6, 3, cache_key="c").double()
    x = torch.randn(2, 8, 6, dtype=torch.float64)
    got, _ = head(x, ctx_for(8))
    h = naive_causal_depthwise_conv(head.depthwise.weight, head.depthwise.bias, x)
    torch.testing.assert_close(got, F.gelu(h) @ head.pointwise.weight.T + head.pointwise.bias)
    for t in (0, 4, 7):
        x2 = x.clone()
        x2[:, t] += 1
        out, _ = head(x2, ctx_for(8))
        torch.testing.assert_close(out[:, :t], got[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t], got[:, t])


def test_conv_head_cache_in_chunks_equals_one_pass():
    head = LocalConvHead(6, 4, cache_key="c").double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    whole, _ = head(x, ctx_for(9))
    cache, parts = MoACache(), []
    for chunk in (slice(0, 2), slice(2, 3), slice(3, 9)):
        parts.append(head(x[:, chunk], ctx_for(chunk.stop - chunk.start, cache=cache))[0])
    torch.testing.assert_close(torch.cat(parts, dim=1), whole)


def test_router_weights_sum_to_one_and_gates_start_at_one():
    model = attnlab.create_model("moa", "debug").eval()
    routing = model.routing(torch.randint(0, 256, (2, 10)))
    L = model.config.n_layers
    assert routing["heads"].shape == (L, 2, 10, 4) and routing["branches"].shape == (L, 2, 10, 3)
    torch.testing.assert_close(routing["heads"].sum(-1), torch.ones(L, 2, 10))
    torch.testing.assert_close(routing["gates"], torch.ones(L, 2, 10, 4))  # zero-initialised router outputs
    assert ((routing["branches"] > 0).sum(-1) == 1).all()  # top-1 by default


def test_routed_mixture_matches_per_head_loop():
    B, T, E, D = 2, 3, 4, 5
    r = Routing(torch.rand(B, T, E).softmax(-1), torch.rand(B, T, E) * 2, torch.randn(B, T, E, D), torch.randn(B, T, E, D))
    outputs = torch.randn(B, T, E, D)
    want = torch.zeros(B, T, D)
    for e in range(E):
        want += (r.weights[..., e] * r.gates[..., e])[..., None] * (outputs[:, :, e] * (1 + r.scale[:, :, e]) + r.shift[:, :, e])
    torch.testing.assert_close(r.mix(outputs), want)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k_hyperffn_is_the_dense_sum_restricted_to_top_k(top_k):
    ffn = HyperFFN(SwiGLU(8, 16), LocalConvHead(8, 3, cache_key="f"), LowRankFFN(8, 2), 8, top_k=top_k, routed=True)
    ffn = ffn.double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    ctx = ctx_for(7)
    branches = torch.stack([ffn.mlp(x), ffn.conv(x, ctx)[0], ffn.lowrank(x)], dim=-2)  # (B, T, 3, D)
    probs = (x @ ffn.router.weight.T).softmax(-1)
    want = torch.zeros_like(x)
    for b in range(2):
        for t in range(7):
            for e in probs[b, t].argsort(descending=True)[:top_k]:
                want[b, t] += probs[b, t, e] * branches[b, t, e]
    torch.testing.assert_close(ffn(x, ctx), want)


def test_unrouted_hyperffn_is_the_branch_mean():
    ffn = HyperFFN(SwiGLU(8, 16), LocalConvHead(8, 3, cache_key="f"), LowRankFFN(8, 2), 8, top_k=1, routed=False)
    x, ctx = torch.randn(2, 5, 8), ctx_for(5)
    torch.testing.assert_close(ffn(x, ctx), (ffn.mlp(x) + ffn.conv(x, ctx)[0] + ffn.lowrank(x)) / 3)


ABLATIONS = [
    {"metric": "cosine"},
    {"metric": "maha_diag", "use_balls": False},
    {"branch_router": False, "ffn_top_k": 3},
    {"ffn_top_k": 2, "pos": "rope", "n_kv_heads": 2},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_ablations_are_causal_and_cached_generation_equals_recompute(overrides):
    torch.manual_seed(0)
    model = attnlab.create_model("moa", "debug", **overrides).eval().double()
    x = torch.randint(0, 256, (2, 16))
    base = model(x).logits
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 256
    torch.testing.assert_close(model(y).logits[:, :9], base[:, :9], rtol=0, atol=1e-12)
    out = model.generate(x[:, :5], max_new_tokens=8, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    full = model(out.sequences, use_cache=False).logits
    for i, step in enumerate(out.logits):
        torch.testing.assert_close(step, full[:, 4 + i].float(), rtol=1e-6, atol=1e-6)


def test_cache_holds_metric_kv_and_conv_states():
    model = attnlab.create_model("moa", "debug").eval()
    out = model(torch.randint(0, 256, (1, 6)), use_cache=True)
    cache = output_cache(out)
    assert isinstance(cache, MoACache) and cache.get_seq_length() == 6
    assert len(cache.layers) == 2 * model.config.n_layers
    assert set(cache.conv_states) == {f"{l}.{n}" for l in range(2) for n in ("conv_head", "ffn_conv")}
    assert cache.conv_states["0.conv_head"].shape == (1, 32, model.config.conv_kernel - 1)


def test_bf16_autocast_trains():
    model = attnlab.create_model("moa", "debug", metric="maha_diag", drop_path=0.1).train()
    x = torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_drop_path_drops_whole_samples_and_rescales():
    drop = DropPath(0.5).train()
    y = drop(torch.ones(64, 3, 2))
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0} and (per_sample == per_sample[:, :1]).all()
    assert torch.equal(drop.eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_card_example_config_json_loads_builds_and_counts(tmp_path):
    raw = json.loads(CARD_JSON.read_text())
    config = MoAMetricConfig.from_json_file(CARD_JSON)
    assert (config.d_model, config.n_layers, config.n_heads, config.d_ff, config.block_size) == (768, 12, 8, 3072, 2048)
    for name, value in raw.items():  # every field of the card is readable under its own name
        assert getattr(config, name) == value, name
    assert type(AutoConfig.for_model(**raw)) is MoAMetricConfig
    with torch.device("meta"):
        model = MoAMetricForCausalLM(config)
    counts = count_parameters(model)
    assert counts["parameters"] == 254_776_032
    (tmp_path / "config.json").write_text(CARD_JSON.read_text())
    assert describe(str(tmp_path), "moa", "debug", {})["parameters"] == counts["parameters"]


def test_card_names_survive_save_and_load(tmp_path):
    model = attnlab.create_model("moa", "debug", dim=48, attn_heads=6, mqa_q_heads=3, num_layers=1)
    assert (model.config.d_model, model.config.n_heads, model.config.mixer_hidden) == (48, 6, 64)
    model.save_pretrained(tmp_path)
    loaded = attnlab.load(tmp_path)
    assert (loaded.config.dim, loaded.config.attn_heads, loaded.config.num_layers) == (48, 6, 1)
    x = torch.randint(0, 256, (1, 8))
    torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits, rtol=0, atol=0)


def test_seed_preset_is_a_deprecated_alias_of_card_example(capsys):
    from attnlab.cli import main

    with pytest.warns(FutureWarning, match="use 'card-example'"):
        old = attnlab.build_config("moa", "seed")
    assert old.to_dict() == attnlab.build_config("moa", "card-example").to_dict()
    assert (old.d_model, old.n_layers, old.vocab_size, old.block_size) == (768, 12, 50257, 2048)
    assert main(["models"]) == 0
    presets = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]
    assert "card-example" in presets and "seed" not in presets


def test_derived_sizes_follow_the_card_aliases():
    config = MoAMetricConfig(dim=64, attn_heads=4)
    assert config.mixer_hidden == 256 and config.ffn_rank == 16 and config.mqa_q_heads == 4
    assert config.d_ff == -(-8 * 64 // 3 // 64) * 64  # SwiGLU default width of the skeleton


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"metric": "l1"}, "metric must be one of"),
        ({"mqa_q_heads": 3}, "divisible by mqa_q_heads"),
        ({"ffn_top_k": 4}, "ffn_top_k"),
        ({"ti_reg_weight": 0.1, "ti_reg_samples": 0}, "ti_reg_samples"),
        ({"alpha_init": 0.0}, "alpha_init must be > 0"),
        ({"router_temperature": -1.0}, "router_temperature"),
        ({"drop_path": 1.0}, "drop_path"),
    ],
)
def test_impossible_moa_configs_raise(overrides, message):
    with pytest.raises(ConfigError, match=message):
        attnlab.create_model("moa", "debug", **overrides)
