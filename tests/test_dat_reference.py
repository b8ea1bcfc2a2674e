"""The authors' DualAttnTransformerLM built from a DATConfig (attnlab.models.dat.reference): the mapping
inverts the checkpoint converter, and their model computes ours (same logits, same loss through the bench's
wrapper)."""

import pytest
import torch

import attnlab
from attnlab.errors import ConfigError
from attnlab.summary import count_parameters
from attnlab.models.dat.convert import convert_authors_state_dict, dat_config_from_authors
from attnlab.models.dat.reference import authors_kwargs, build_authors_model

VARIANTS = [
    dict(pos="rope"),
    dict(ffn="swiglu", norm="rmsnorm", n_kv_heads=1),
    dict(d_model=48, n_heads_sa=2, n_heads_ra=4, n_kv_heads=2, symbol_heads=2),  # GQA in the RA heads only
    dict(symbol_retrieval="positional", symmetric_rels=True, rel_activation="tanh"),
    dict(symbol_retrieval="position_relative", max_rel_pos=5, pos="rope", n_relations=4),
]
IDS = ["symattn-rope", "swiglu-rmsnorm-mqa", "ra-gqa", "positional-symmetric-tanh", "relative-rope"]
SYMBOL_FIELDS = ("n_symbols", "symbol_heads", "trainable_symbols")  # used by symbolic attention only


def relevant(config) -> dict:
    """The config's fields that define the function (``rel_form`` picks kernels; symbol fields may be unused)."""
    values = config.to_dict()
    values.pop("rel_form")
    if config.symbol_retrieval != "symbolic_attention":
        for name in SYMBOL_FIELDS:
            values.pop(name)
    return values


@pytest.mark.parametrize("out_proj", ["shared", "per_kind"])
@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_dat_config_round_trips_through_the_authors_kwargs(overrides, out_proj):
    config = attnlab.build_config("dat", "debug", out_proj=out_proj, **overrides)
    assert relevant(dat_config_from_authors(authors_kwargs(config), out_proj)) == relevant(config)


@pytest.mark.parametrize("out_proj", ["shared", "per_kind"])
@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_authors_model_from_our_config_computes_ours(overrides, out_proj):
    pytest.importorskip("einops")
    pytest.importorskip("dual_attention.language_models")
    from attnlab.bench.references import build_reference

    config = attnlab.build_config("dat", "debug", out_proj=out_proj, **overrides)
    torch.manual_seed(0)
    wrapped = build_reference("dual-attention", config).eval()
    theirs = wrapped.model
    ours = convert_authors_state_dict(authors_kwargs(config), theirs.state_dict(), out_proj)
    assert relevant(ours.config) == relevant(config)
    if out_proj == "per_kind":  # their parameters exactly, plus zero biases where their maps have none
        relation_maps = config.n_relations * config.rel_proj_dim * (1 if config.symmetric_rels else 2)
        zero_biases = config.n_layers * (config.n_heads * config.head_dim + relation_maps)  # + the query maps'
        if config.symbol_retrieval == "position_relative":  # their table also has the offsets j - i > 0
            zero_biases -= config.max_rel_pos * config.d_model
        assert count_parameters(ours)["parameters"] - count_parameters(theirs)["parameters"] == zero_biases
    x = torch.randint(0, config.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x)[0], rtol=1e-5, atol=1e-5)
        # the bench's wrapper: HF-style labels (shifted inside) and already-shifted labels give our loss
        expected = ours(x, labels=x).loss
        torch.testing.assert_close(wrapped(input_ids=x, labels=x).loss, expected, rtol=1e-5, atol=1e-6)
        shifted = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)
        torch.testing.assert_close(wrapped(input_ids=x, shift_labels=shifted).loss, expected, rtol=1e-5, atol=1e-6)
        last = wrapped(input_ids=x, use_cache=True, logits_to_keep=1).logits
        torch.testing.assert_close(last, ours(x).logits[:, -1:], rtol=1e-5, atol=1e-5)
    for name in ("cache", "past_key_values"):  # the name since / before transformers 5.24
        with pytest.raises(ValueError, match="no KV cache"):
            wrapped(input_ids=x, **{name: object()})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(bias=False), "bias=False"),
        (dict(pos="rope", rope_theta=500000.0), "rope_theta"),
        (dict(norm_eps=1e-6), "norm_eps"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings"),
        (dict(n_relations=4, rel_proj_dim=8), "rel_proj_dim"),
    ],
)
def test_configs_without_an_authors_twin_are_refused(overrides, message):
    config = attnlab.build_config("dat", "debug", **overrides)
    with pytest.raises(ConfigError, match=message):
        authors_kwargs(config)


def test_build_needs_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dual_attention.language_models", None)
    with pytest.raises(ImportError):
        build_authors_model(attnlab.build_config("dat", "debug"))
