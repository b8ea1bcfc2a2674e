"""The authors' sequence-to-sequence and vision checkpoints (``dual-attention`` 0.0.7) converted by
``attnlab convert dat-checkpoint``: the same logits as their models (fp64, within 1e-5), on configurations away
from the defaults of both sides (symbol retrievers, head splits, grouped key/value heads, norm placement and
kind, pooling, patches, channels), the kind read from the checkpoint and one-line refusals."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageClassification, AutoModelForSeq2SeqLM

from attnlab.cli import main
from attnlab.errors import ConfigError
from attnlab.models.dat import DATForImageClassification, DATForSeq2SeqLM
from attnlab.models.dat.convert import checkpoint_kind, convert_dat_checkpoint

pytest.importorskip("einops")
seq2seq_models = pytest.importorskip("dual_attention.seq2seq_models")
vision_models = pytest.importorskip("dual_attention.vision_models")

D = 48  # d_model of every model here: 1, 2, 3, 4 and 6 heads divide it


def perturbed(model: nn.Module) -> nn.Module:
    """Their model with norms away from their (1, 0) init, so that a norm mapped to the wrong place shows."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm":
            module.weight.data.normal_(1.0, 0.2)
            if getattr(module, "bias", None) is not None:
                module.bias.data.normal_(0.0, 0.2)
    return model.eval()


def converted(cfg: dict, theirs: nn.Module, tmp_path, auto_class) -> nn.Module:
    """Their checkpoint saved as their scripts save it, converted, and loaded back by the Auto class, in fp64."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg, "model": theirs.state_dict()}, tmp_path / "ckpt.pt")
    convert_dat_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    return auto_class.from_pretrained(tmp_path / "out").eval().double()


# ----------------------------------------------------------------------------- sequence-to-sequence
def seq2seq_config(encoder: dict, decoder: dict, retriever: str | None = None, symbol_kwargs: dict | None = None,
                   n_layers: tuple[int, int] = (2, 2)) -> dict:
    """``Seq2SeqDualAttnTransformer`` kwargs (``Seq2SeqTransformer``'s without a retriever)."""
    cfg = dict(input_spec=dict(type="token", vocab_size=23), output_spec=dict(type="token", vocab_size=19), d_model=D,
               out_dim=19, n_layers_enc=n_layers[0], n_layers_dec=n_layers[1], encoder_kwargs=encoder,
               decoder_kwargs=decoder, in_block_size=12, out_block_size=9)
    if retriever is not None:
        cfg |= dict(symbol_retrieval=retriever, symbol_retrieval_kwargs=symbol_kwargs)
    return cfg


def dat_block(sa: int, ra: int, cross: int | None = None, **kwargs) -> dict:
    block = dict(n_heads_sa=sa, n_heads_ra=ra, dff=40, activation="relu", dropout_rate=0.1, norm_first=False) | kwargs
    if cross is not None:
        block |= dict(n_heads_cross=cross, causal=True)
    return block


RELATIVE_MQA = dict(n_relations=4, n_kv_heads=1, symmetric_rels=True, use_relative_positional_symbols=True)
SEQ2SEQ = {
    # post-norm RMSNorm blocks, position-relative symbols (both signs in the encoder), symmetric relations, MQA in
    # every attention (self, relational and cross)
    "post-norm-relative-mqa": seq2seq_config(
        dat_block(2, 2, norm_type="rmsnorm", sa_kwargs=dict(n_kv_heads=1), ra_kwargs=RELATIVE_MQA),
        dat_block(2, 2, cross=4, norm_type="rmsnorm", sa_kwargs=dict(n_kv_heads=1), cross_kwargs=dict(n_kv_heads=1),
                  ra_kwargs=RELATIVE_MQA),
        "position_relative", dict(symbol_dim=D, max_rel_pos=4)),
    # pre-norm GELU blocks of 1 SA + 3 RA heads, symbolic attention, biases on keys, values and outputs
    "pre-norm-symbolic-biases": seq2seq_config(
        dat_block(1, 3, activation="gelu", norm_first=True, sa_kwargs=dict(add_bias_kv=True, add_bias_out=True),
                  ra_kwargs=dict(n_relations=6, rel_activation="tanh", add_bias_kv=True, add_bias_out=True)),
        dat_block(1, 3, cross=3, activation="gelu", norm_first=True, sa_kwargs=dict(add_bias_out=True),
                  ra_kwargs=dict(n_relations=6, rel_activation="tanh", add_bias_out=True),
                  cross_kwargs=dict(add_bias_kv=True, add_bias_out=True)),
        "symbolic_attention", dict(d_model=D, n_heads=4, n_symbols=10, trainable_symbols=False)),
    # relational heads in the encoder only (the paper's "DAT encoder"), positional symbols, SwiGLU of their default
    # width, grouped key/value heads (2) where a kind has more than 2 heads
    "encoder-only-relational-positional-gqa": seq2seq_config(
        dat_block(2, 2, activation="swiglu", dff=None, norm_first=True, ra_kwargs=dict(n_relations=3, rel_proj_dim=8)),
        dat_block(4, 0, cross=6, activation="swiglu", dff=None, norm_first=True, sa_kwargs=dict(n_kv_heads=2),
                  cross_kwargs=dict(n_kv_heads=2)),
        "positional_symbols", dict(symbol_dim=D, max_length=16)),
}


def transformer_block(heads: int, cross: bool = False, **kwargs) -> dict:
    block = dict(n_heads=heads, dff=40, activation="gelu", dropout_rate=0.1, norm_first=True, bias=False) | kwargs
    return block | (dict(n_heads_cross=heads, causal=True) if cross else {})


def seq2seq_logits_match(cfg: dict, tmp_path, model_class) -> DATForSeq2SeqLM:
    """Their model of ``cfg`` and ours converted from it give the same teacher-forced logits; ours returned."""
    torch.manual_seed(0)
    theirs = perturbed(model_class(**cfg)).double()
    ours = converted(cfg, theirs, tmp_path, AutoModelForSeq2SeqLM)
    source, target = torch.randint(0, 23, (3, 12)), torch.randint(0, 19, (3, 9))
    with torch.no_grad():
        expected = theirs(source, target, target)[0]  # with targets: the logits of every target position
        got = ours(input_ids=source, decoder_input_ids=target).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    return ours


@pytest.mark.parametrize("case", SEQ2SEQ)
def test_seq2seq_dat_checkpoint_gives_their_logits(case, tmp_path):
    ours = seq2seq_logits_match(SEQ2SEQ[case], tmp_path, seq2seq_models.Seq2SeqDualAttnTransformer)
    assert isinstance(ours, DATForSeq2SeqLM) and ours.lm_head.bias is not None
    assert ours.lm_head.weight is not ours.decoder.embed_tokens.weight


def test_seq2seq_transformer_checkpoint_gives_their_logits(tmp_path):
    """Their baseline: grouped key/value heads (attn_kwargs) in a wider encoder, biases, pre-norm GELU blocks."""
    cfg = seq2seq_config(transformer_block(4, attn_kwargs=dict(n_kv_heads=2, add_bias_kv=True), bias=True),
                         transformer_block(2, cross=True))
    ours = seq2seq_logits_match(cfg, tmp_path, seq2seq_models.Seq2SeqTransformer)
    assert ours.config.n_heads_ra == ours.config.decoder_heads_ra == 0 and ours.config.n_kv_heads == 2


def test_their_code_bugs_are_kept_where_the_weights_carry_them(tmp_path):
    """Their DAT decoder has n_layers_enc blocks whatever n_layers_dec says; their baseline's cross-attention has
    n_heads heads whatever n_heads_cross says. The converted models compute what those weights compute."""
    dat = SEQ2SEQ["pre-norm-symbolic-biases"] | dict(n_layers_enc=2, n_layers_dec=1)
    ours = seq2seq_logits_match(dat, tmp_path / "dat", seq2seq_models.Seq2SeqDualAttnTransformer)
    assert ours.config.decoder_layers == 2
    cfg = seq2seq_config(transformer_block(4), transformer_block(4, cross=True) | dict(n_heads_cross=2),
                         n_layers=(1, 2))
    ours = seq2seq_logits_match(cfg, tmp_path / "baseline", seq2seq_models.Seq2SeqTransformer)
    assert ours.config.cross_heads == 4 and ours.config.decoder_layers == 2


# ----------------------------------------------------------------------------- vision
def vision_config(image_shape, patch: int, pool: str, **kwargs) -> dict:
    return dict(image_shape=image_shape, patch_size=(patch, patch), num_classes=5, d_model=D, n_layers=2, dff=40,
                dropout_rate=0.1, pool=pool) | kwargs


VISION = {
    # CLS pooling, pre-norm, symbolic attention, 1 SA + 3 RA heads, MQA for both kinds
    "cls-symbolic-mqa": vision_config(
        (3, 12, 12), 4, "cls", n_heads_sa=1, n_heads_ra=3, activation="gelu", norm_first=True,
        symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=D, n_heads=4, n_symbols=10),
        sa_kwargs=dict(n_kv_heads=1), ra_kwargs=dict(n_relations=3, n_kv_heads=1)),
    # mean pooling, post-norm, one channel, 8×16 images, position-relative symbols (offsets of both signs along the
    # raster order), symmetric relations, SwiGLU without biases
    "mean-relative-grayscale": vision_config(
        (1, 8, 16), 4, "mean", n_heads_sa=2, n_heads_ra=2, activation="swiglu", norm_first=False, bias=False,
        symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=D, max_rel_pos=3),
        ra_kwargs=dict(n_relations=2, symmetric_rels=True, use_relative_positional_symbols=True)),
    # relational heads only, positional symbols, 6-pixel patches of 12×18 images, RMSNorm
    "ra-only-positional": vision_config(
        (3, 12, 18), 6, "mean", n_heads_sa=0, n_heads_ra=2, activation="gelu", norm_first=True, norm_type="rmsnorm",
        symbol_retrieval="positional_symbols", symbol_retrieval_kwargs=dict(symbol_dim=D, max_length=10),
        ra_kwargs=dict(rel_activation="relu", add_bias_kv=True)),
}


def vision_logits_match(cfg: dict, tmp_path, model_class) -> DATForImageClassification:
    torch.manual_seed(0)
    theirs = perturbed(model_class(**cfg)).double()
    ours = converted(cfg, theirs, tmp_path, AutoModelForImageClassification)
    images = torch.randn(3, *cfg["image_shape"], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).logits, theirs(images), rtol=1e-5, atol=1e-5)
    return ours


@pytest.mark.parametrize("case", VISION)
def test_vision_dat_checkpoint_gives_their_logits(case, tmp_path):
    ours = vision_logits_match(VISION[case], tmp_path, vision_models.VisionDualAttnTransformer)
    assert ours.config.pooling == VISION[case]["pool"] and not ours.config.final_norm


def test_vision_transformer_checkpoint_gives_their_logits(tmp_path):
    cfg = vision_config((3, 6, 6), 2, "cls", n_heads=4, activation="relu", norm_first=False, bias=False)
    ours = vision_logits_match(cfg, tmp_path, vision_models.VisionTransformer)
    assert ours.config.n_heads_ra == 0 and ours.config.num_labels == 5


# ----------------------------------------------------------------------------- kinds, refusals, the command
def test_kind_is_read_from_config_keys_and_weight_names():
    torch.manual_seed(0)
    cfg = VISION["cls-symbolic-mqa"]
    weights = vision_models.VisionDualAttnTransformer(**cfg).state_dict()
    assert checkpoint_kind(cfg, weights) == "VisionDualAttnTransformer"
    assert checkpoint_kind(cfg, {"_orig_mod." + k: v for k, v in weights.items()}) == "VisionDualAttnTransformer"
    with pytest.raises(ConfigError, match="not a checkpoint of a dual-attention model attnlab converts"):
        checkpoint_kind({"d_model": D, "layers": 2}, weights)
    with pytest.raises(ConfigError, match="not a checkpoint"):  # a vision config with another model's weights
        checkpoint_kind(cfg, {"layers.encoder_blocks.0.dual_attn.x": torch.zeros(1)})


def test_what_has_no_twin_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    cfg = VISION["cls-symbolic-mqa"] | dict(symbol_retrieval="rel_sym_attn", symbol_retrieval_kwargs=dict(
        d_model=D, rel_n_heads=2, symbolic_attn_n_heads=2, n_symbols=4, nbhd_delta=2))
    torch.save({"config": cfg, "model": vision_models.VisionDualAttnTransformer(**cfg).state_dict()}, tmp_path / "a.pt")
    with pytest.raises(ConfigError, match=r"^cannot convert this VisionDualAttnTransformer: symbol_retrieval="
                                          r"'rel_sym_attn' not supported$"):
        convert_dat_checkpoint(tmp_path / "a.pt", tmp_path / "out")
    baseline = seq2seq_config(transformer_block(4), transformer_block(4, cross=True) | dict(causal=False))
    torch.save({"config": baseline, "model": seq2seq_models.Seq2SeqTransformer(**baseline).state_dict()},
               tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="decoder_kwargs causal=False"):
        convert_dat_checkpoint(tmp_path / "b.pt", tmp_path / "out")


def test_convert_command_writes_a_seq2seq_model(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = SEQ2SEQ["post-norm-relative-mqa"]
    theirs = seq2seq_models.Seq2SeqDualAttnTransformer(**cfg).eval()
    torch.save({"config": cfg, "model": theirs.state_dict()}, tmp_path / "ckpt.pt")
    assert main(["convert", "dat-checkpoint", str(tmp_path / "ckpt.pt"), str(tmp_path / "out")]) == 0
    assert "DATForSeq2SeqLM" in capsys.readouterr().out
    source, target = torch.randint(0, 23, (1, 12)), torch.randint(0, 19, (1, 9))
    ours = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=source, decoder_input_ids=target).logits,
                                   theirs(source, target, target)[0], rtol=1e-5, atol=1e-5)
