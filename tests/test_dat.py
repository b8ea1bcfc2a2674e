"""Dual Attention Transformer: relational attention and symbol retrievers against loops written from the
paper's equations (fp64), the GPT reduction, caching, padding, and the authors' checkpoints."""

import math

import pytest
import torch

import attnlab
from attnlab.errors import ConfigError
from attnlab.bench.specs import count_params
from attnlab.summary import count_parameters
from attnlab.models.hf_compat import output_cache
from attnlab.layers import MixerContext, RotaryEmbedding
from attnlab.ops.relational import forms as relational
from attnlab.layers.relational import FUSED_FROM_KEYS, RELATION_ACTIVATIONS
from attnlab.ops.attention.naive import naive_rope
from attnlab.ops.relational.naive import naive_relational, naive_symbolic_attention

RETRIEVERS = ["symbolic_attention", "positional", "position_relative"]
FORMS = ["fused", "direct", "direct-blocks"]  # direct-blocks: the direct form by blocks of 3 queries


def rel_form(form, monkeypatch):
    """The config's rel_form for a FORMS entry (small query blocks patched in for direct-blocks)."""
    if form == "direct-blocks":
        monkeypatch.setattr(relational, "DIRECT_BLOCK_ROWS", 3)
        return "direct"
    return form


def make(**overrides):
    torch.manual_seed(0)
    return attnlab.create_model("dat", "debug", **overrides).eval().double()


def linear(layer, v):
    return layer.weight @ v + (layer.bias if layer.bias is not None else 0)


def naive_symbols(model, x, positions):
    """s_j of every position j (absolute retrievers), one object at a time; or the relative table."""
    retriever, config = model.symbol_retriever, model.config
    if config.symbol_retrieval == "position_relative":
        return retriever.table
    if config.symbol_retrieval == "positional":
        return retriever.library.weight[positions]
    return naive_symbolic_attention(x, q_weight=retriever.q_proj.weight, q_bias=retriever.q_proj.bias,
                                    templates=retriever.templates, library=retriever.library,
                                    n_heads=config.symbol_heads)


def relational_weights(ra):
    """The weights of a ``RelationalAttention`` under the names of ``naive_relational``."""
    return dict(qk_weight=ra.qk.weight, qk_bias=ra.qk.bias, rel_weight=ra.rel.weight, rel_bias=ra.rel.bias,
                symbol_weight=ra.symbol_values.weight, symbol_bias=ra.symbol_values.bias, w_r=ra.w_r,
                symmetric=ra.symmetric, activation=RELATION_ACTIVATIONS[ra.activation])


def naive_dual_attention(model, layer, x, rope):
    """out([SA heads ; RA heads]) of one layer; x is the block input (the mixer applies the pre-norm)."""
    mixer, config = model.model.layers[layer].mixer, model.config
    B, T, _ = x.shape
    positions = torch.arange(T).expand(B, T)
    symbols = naive_symbols(model, x, positions)
    h = mixer.norm(x)
    heads = []
    sa, kv, D = config.n_heads_sa, config.kv_heads(config.n_heads_sa), config.head_dim
    if sa:
        y = torch.zeros(B, T, sa * D, dtype=x.dtype)
        for b in range(B):
            qkv = [linear(mixer.qkv, h[b, t]) for t in range(T)]
            for hd in range(sa):
                g = hd // (sa // kv)
                for i in range(T):
                    q = qkv[i][hd * D : (hd + 1) * D]
                    ks = [qkv[j][sa * D + g * D : sa * D + (g + 1) * D] for j in range(i + 1)]
                    vs = [qkv[j][(sa + kv) * D + g * D : (sa + kv) * D + (g + 1) * D] for j in range(i + 1)]
                    if rope:
                        q, ks = naive_rope(q, i), [naive_rope(k, j) for j, k in enumerate(ks)]
                    w = torch.stack([q @ k / math.sqrt(D) for k in ks]).softmax(0)
                    y[b, i, hd * D : (hd + 1) * D] = sum(w[j] * vs[j] for j in range(i + 1))
        heads.append(y)
    rel_max = config.max_rel_pos if config.symbol_retrieval == "position_relative" else None
    heads.append(naive_relational(h, symbols, **relational_weights(mixer.relational), rope=rope,
                                  relative_max=rel_max))
    if config.out_proj == "per_kind" and len(heads) == 2:  # [out(SA heads) ; out_ra(RA heads)]
        return torch.cat([heads[0] @ mixer.out.weight.T + mixer.out.bias,
                          heads[1] @ mixer.out_ra.weight.T + mixer.out_ra.bias], -1)
    return torch.cat(heads, -1) @ mixer.out.weight.T + mixer.out.bias


def run_layer(model, layer, x):
    T = x.shape[1]
    positions = torch.arange(T).expand(x.shape[0], T)
    rope = None
    if model.config.pos == "rope":
        rope = tuple(t.double() for t in RotaryEmbedding(model.config.head_dim)(positions))
    ctx = MixerContext(position_ids=positions, rope=rope)
    return model.model.layers[layer].mixer(x, ctx)[0]


@pytest.mark.parametrize("retriever", RETRIEVERS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_dual_attention_matches_paper_loop(retriever, symmetric, form, monkeypatch):
    if form != "direct" and retriever == "position_relative":
        pytest.skip("position-relative symbols always use the direct form, whole")
    model = make(symbol_retrieval=retriever, symmetric_rels=symmetric, rel_form=rel_form(form, monkeypatch),
                 n_relations=4, max_rel_pos=3)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    torch.testing.assert_close(run_layer(model, 1, x), naive_dual_attention(model, 1, x, rope=False))


@pytest.mark.parametrize("heads", [(2, 2), (1, 3), (0, 4)])
def test_output_projection_per_head_kind_matches_paper_loop(heads):
    """out_proj="per_kind": [out(SA heads) ; out_ra(RA heads)], the authors' block-diagonal projection."""
    sa, ra = heads
    model = make(n_heads_sa=sa, n_heads_ra=ra, out_proj="per_kind", symbol_retrieval="positional")
    mixer = model.model.layers[0].mixer
    assert mixer.out.in_features == (sa * 8 if sa else 32) and hasattr(mixer, "out_ra") == bool(sa and ra)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    torch.testing.assert_close(run_layer(model, 0, x), naive_dual_attention(model, 0, x, rope=False))
    shared = make(n_heads_sa=sa, n_heads_ra=ra, symbol_retrieval="positional")
    dropped = 2 * sa * ra * 8 * 8 * model.config.n_layers  # the off-diagonal blocks of each layer's projection
    assert count_parameters(shared)["parameters"] - count_parameters(model)["parameters"] == dropped


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("retriever", ["positional", "position_relative"])
def test_nonlinear_relation_activation_matches_paper_loop(activation, retriever):
    model = make(rel_activation=activation, symbol_retrieval=retriever, n_kv_heads=1, max_rel_pos=3)
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    torch.testing.assert_close(run_layer(model, 0, x), naive_dual_attention(model, 0, x, rope=False))


@pytest.mark.parametrize("form", FORMS)
def test_relational_only_gqa_rope_matches_paper_loop(form, monkeypatch):
    model = make(n_heads_sa=0, n_heads_ra=4, n_kv_heads=2, pos="rope", rel_form=rel_form(form, monkeypatch),
                 symbol_retrieval="positional")
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    got = run_layer(model, 0, x)
    torch.testing.assert_close(got, naive_dual_attention(model, 0, x, rope=True), rtol=1e-6, atol=1e-6)


def test_symmetric_relations_are_symmetric():
    for symmetric in (True, False):
        ra = make(symmetric_rels=symmetric).model.layers[0].mixer.relational
        x = torch.randn(5, 32, dtype=torch.float64)
        q, k = ra.relation_maps(x)
        q, k = q.view(5, ra.n_relations, -1).transpose(0, 1), k.view(5, ra.n_relations, -1).transpose(0, 1)
        r = q @ k.transpose(-1, -2)  # r[ℓ, i, j]
        assert torch.allclose(r, r.transpose(-1, -2)) == symmetric


@pytest.mark.parametrize("block_rows", [7, 256])
def test_fused_and_direct_forms_agree_on_the_whole_model(block_rows, monkeypatch):
    """Logits and every gradient, with left padding (the padding mask is sliced per query block)."""
    monkeypatch.setattr(relational, "DIRECT_BLOCK_ROWS", block_rows)
    x = torch.randint(1, 256, (2, 30))
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    fused, direct = make(rel_form="fused", pos="rope", n_kv_heads=1), make(rel_form="direct", pos="rope", n_kv_heads=1)
    for model in (fused, direct):
        out = model(x, attention_mask=mask, labels=x)
        out.loss.backward()
    torch.testing.assert_close(fused(x, attention_mask=mask).logits, direct(x, attention_mask=mask).logits,
                               rtol=1e-10, atol=1e-10)
    for (name, a), b in zip(fused.named_parameters(), direct.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_no_relational_heads_is_the_gpt_baseline(pos):
    torch.manual_seed(0)
    gpt = attnlab.create_model("gpt", "debug", pos=pos, n_kv_heads=2).eval()
    dat = attnlab.create_model("dat", "debug", pos=pos, n_heads_sa=4, n_heads_ra=0, n_kv_heads=2).eval()
    dat.load_state_dict(gpt.state_dict(), strict=True)
    x = torch.randint(0, 256, (2, 20))
    torch.testing.assert_close(dat(x).logits, gpt(x).logits, rtol=0, atol=0)
    a = gpt.generate(x[:, :5], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(dat.generate(x[:, :5], max_new_tokens=6, do_sample=False, pad_token_id=0), a)


@pytest.mark.parametrize("retriever", RETRIEVERS)
@pytest.mark.parametrize("form", FORMS)
def test_causal_cached_and_padded_for_every_retriever_and_form(retriever, form, monkeypatch):
    if form != "direct" and retriever == "position_relative":
        pytest.skip("position-relative symbols always use the direct form, whole")
    model = make(symbol_retrieval=retriever, rel_form=rel_form(form, monkeypatch), pos="rope", n_kv_heads=1,
                 max_rel_pos=5)
    V = model.config.vocab_size
    x = torch.randint(1, V, (2, 16))  # 0 is the pad token
    base = model(x).logits
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % V
    torch.testing.assert_close(model(y).logits[:, :9], base[:, :9], rtol=0, atol=1e-12)
    out = model.generate(x[:, :4], max_new_tokens=8, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    full = model(out.sequences, use_cache=False).logits
    for i, step in enumerate(out.logits):
        torch.testing.assert_close(step, full[:, 3 + i].float(), rtol=1e-6, atol=1e-6)
    first = model(x[:, :9], use_cache=True)  # a cache continued by 7 tokens at once (several query blocks)
    rest = model(x[:, 9:], cache=output_cache(first), use_cache=True).logits
    torch.testing.assert_close(rest, base[:, 9:], rtol=1e-9, atol=1e-9)
    mask = torch.ones_like(x)
    mask[0, :5] = 0  # left padding
    padded = model(x, attention_mask=mask).logits
    torch.testing.assert_close(padded[0, 5:], model(x[:1, 5:]).logits[0], rtol=1e-9, atol=1e-9)


def test_output_attentions_concatenate_sa_and_ra_heads():
    out = make()(torch.randint(0, 256, (1, 6)), output_attentions=True)
    weights = out.attentions[0]
    assert weights.shape == (1, 4, 6, 6) and torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 6, dtype=torch.float64))


def test_bf16_autocast_training_step():
    model = attnlab.create_model("dat", "debug", rel_form="fused")
    x = torch.randint(0, 256, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.layers[0].mixer.relational.w_r.grad is not None


def test_symbol_library_is_shared_and_saved_once(tmp_path):
    model = make().float()
    libraries = {id(layer.mixer._symbol_retriever[0]) for layer in model.model.layers}
    assert libraries == {id(model.symbol_retriever)}
    model.save_pretrained(tmp_path)
    loaded = attnlab.load(tmp_path)
    x = torch.randint(0, 256, (1, 12))
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    assert loaded.model.layers[1].mixer._symbol_retriever[0] is loaded.symbol_retriever


def test_released_presets_match_the_paper_table():
    expected = {"343m": (1024, 8, 64, 4), "734m": (1536, 12, 64, 6), "1.27b": (2048, 16, 128, 8)}
    for name, (d, heads, d_r, kv) in expected.items():
        c = attnlab.build_config("dat", name)
        assert (c.d_model, c.n_layers, c.n_heads_sa, c.n_heads_ra, c.n_relations, c.n_kv_heads, c.block_size) == (
            d, 24, heads, heads, d_r, kv, 1024)
    # The authors' models of these configs count 345,123,840 / 737,100,288 / 1,276,925,952 parameters: ours add
    # only the biases of the query and relation maps (theirs have none; zero after converting their weights).
    sizes = {name: count_params(attnlab.build_config("dat", name), "dat") for name in expected}
    assert sizes == {"343m": 345_172_992, "734m": 737_174_016, "1.27b": 1_277_024_256}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_heads": 3}, "n_heads is n_heads_sa"),
        ({"n_heads_sa": 0, "n_heads_ra": 0}, "at least one head"),
        ({"n_heads_sa": 3, "n_heads_ra": 3, "d_model": 36, "n_kv_heads": 2}, "divisible by its key/value heads"),
        ({"rel_form": "fused", "rel_activation": "relu"}, "needs rel_activation='identity'"),
        ({"rel_form": "fused", "symbol_retrieval": "position_relative"}, "position-relative"),
        ({"symbol_retrieval": "by_magic"}, "symbol_retrieval must be one of"),
        ({"rel_activation": "softmax"}, "rel_activation must be one of"),
        ({"n_relations": 3}, "rel_proj_dim"),
        ({"symbol_heads": 3}, "divisible by symbol_heads"),
        ({"out_proj": "diagonal"}, "out_proj must be one of"),
    ],
)
def test_impossible_configs_raise_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        attnlab.create_model("dat", "debug", **overrides)


# ----------------------------------------------------------------------------- the authors' package

def authors_config(retriever="symbolic_attention", pos="RoPE", activation="gelu", symmetric=False):
    symbol_kwargs = {
        "symbolic_attention": dict(d_model=64, n_symbols=16, n_heads=4, trainable_symbols=False),
        "positional_symbols": dict(symbol_dim=64, max_length=32),
        "position_relative": dict(symbol_dim=64, max_rel_pos=6),
    }[retriever]
    return dict(
        vocab_size=100, d_model=64, n_layers=2, n_heads_sa=2, n_heads_ra=2, symbol_retrieval_kwargs=symbol_kwargs,
        dff=None, dropout_rate=0.0, activation=activation, norm_first=True, max_block_size=32,
        sa_kwargs=dict(n_kv_heads=1),
        ra_kwargs=dict(n_relations=8, rel_activation="identity", n_kv_heads=1, symmetric_rels=symmetric,
                       use_relative_positional_symbols=retriever == "position_relative"),
        symbol_retrieval=retriever, pos_enc_type=pos, bias=False,
    )


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pos": "pos_emb", "activation": "swiglu"}, {"retriever": "positional_symbols", "symmetric": True},
     {"retriever": "position_relative"}],
    ids=["symattn-rope", "learned-swiglu", "positional-symmetric", "relative"],
)
def test_authors_checkpoint_converts_to_equal_logits(kwargs, tmp_path):
    pytest.importorskip("einops")
    lm = pytest.importorskip("dual_attention.language_models")
    from attnlab.models.dat.convert import convert_dat_checkpoint

    torch.manual_seed(0)
    config = authors_config(**kwargs)
    theirs = lm.DualAttnTransformerLM(**config).eval()
    torch.save({"config": config, "model": theirs.state_dict()}, tmp_path / "ckpt.pt")
    convert_dat_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    ours = attnlab.load(tmp_path / "out")
    x = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x)[0], rtol=1e-5, atol=1e-5)
    # and our cached generation continues their model exactly (they recompute the whole prefix)
    greedy = ours.generate(x[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(theirs(greedy)[0][:, 5:-1].argmax(-1), greedy[:, 6:])


def test_converter_refuses_what_has_no_twin(tmp_path):
    from attnlab.models.dat.convert import dat_config_from_authors

    with pytest.raises(ConfigError, match="share_attn_params"):
        dat_config_from_authors({**authors_config(), "share_attn_params": True})
    torch.save({"weights": {}}, tmp_path / "bad.pt")
    from attnlab.models.dat.convert import convert_dat_checkpoint

    with pytest.raises(ConfigError, match="expected keys"):
        convert_dat_checkpoint(tmp_path / "bad.pt", tmp_path / "out")


def test_auto_form_is_direct_below_the_devices_threshold_and_fused_from_it():
    ra = make().model.layers[0].mixer.relational
    for device, keys in FUSED_FROM_KEYS.items():
        assert not ra.uses_fused_form(keys - 1, keys - 1, False, device)
        assert ra.uses_fused_form(1, keys, False, device)  # decoding one token after keys - 1 cached ones
        assert not ra.uses_fused_form(keys, keys, True, device)  # attention weights need α itself
    assert not make(rel_form="direct").model.layers[0].mixer.relational.uses_fused_form(8192, 8192, False)
    assert make(rel_form="fused").model.layers[0].mixer.relational.uses_fused_form(1, 1, False)
