"""Load the ``dual-attention`` package's (0.0.7) ``Seq2SeqDualAttnTransformer`` and ``Seq2SeqTransformer``
checkpoints into ``DATForSeq2SeqLM`` (layer layouts: ``convert_parts``).

Where their models differ from our defaults, the converted config says so with options of ours:

- fixed sinusoidal positions added to token embeddings scaled by √d_model: ``pos="sinusoidal"``,
  ``scale_embeddings=True``; no norm after either stack: ``final_norm=False``; pre- or post-norm: ``norm_first``;
- an LM head of its own, with a bias (their weight tying assigns an attribute that nothing reads):
  ``tie_word_embeddings=False``, ``lm_head_bias=True``;
- the key/value heads of every attention: one ``n_kv_heads`` (``kv_heads_option``); their relative-symbol table
  flipped (they index it by j − i, we by i − j).

The converted model computes what their weights compute, so two bugs of their classes are kept where the
weights carry them: their DAT decoder has ``n_layers_enc`` blocks whatever ``n_layers_dec`` says
(``decoder_layers`` is the number of decoder blocks in the weights), and their baseline decoder's
cross-attention has ``n_heads`` heads whatever ``n_heads_cross`` says (``cross_heads`` is ``n_heads``). Their
encoder has no padding mask: ours called without ``attention_mask`` attends to padding as theirs does.
"""

from __future__ import annotations

from typing import Any

from .configuration_dat_seq2seq import DATSeq2SeqConfig
from .convert_parts import (
    StateDict,
    TheirStack,
    block_weights,
    count_blocks,
    dual_attention_stack,
    kv_heads_option,
    linear_weights,
    merged_options,
    refuse,
    retriever_weights,
    symbol_options,
    transformer_stack,
)
from .modeling_dat_seq2seq import DATForSeq2SeqLM


def seq2seq_config_from_authors(cfg: dict[str, Any], sd: StateDict, *, dual: bool) -> DATSeq2SeqConfig:
    """Our config for their ``Seq2SeqDualAttnTransformer(**cfg)`` (``dual``) or ``Seq2SeqTransformer(**cfg)`` with
    weights ``sd``; ConfigError naming what has no twin."""
    what = "Seq2SeqDualAttnTransformer" if dual else "Seq2SeqTransformer"
    problems = _spec_problems(cfg)
    encoder, decoder = _stacks(cfg, dual)
    problems += encoder.problems + decoder.problems
    symbols: dict[str, Any] = {}
    if dual and (encoder.heads_ra or decoder.heads_ra):
        positions = max(cfg["in_block_size"], cfg["out_block_size"])
        symbols = symbol_options(cfg["symbol_retrieval"], dict(cfg.get("symbol_retrieval_kwargs") or {}), positions,
                                 problems)
    refuse(problems, what)
    options = merged_options({"encoder_kwargs": encoder, "decoder_kwargs": decoder})
    attentions = {f"encoder {name}": heads for name, heads in encoder.attentions.items()}
    attentions |= {f"decoder {name}": heads for name, heads in decoder.attentions.items()}
    return DATSeq2SeqConfig(
        vocab_size=cfg["output_spec"]["vocab_size"], source_vocab_size=cfg["input_spec"]["vocab_size"],
        d_model=cfg["d_model"], n_layers=count_blocks(sd, "layers.encoder_blocks."),
        decoder_layers=count_blocks(sd, "layers.decoder_blocks."), n_heads_sa=encoder.heads_sa,
        n_heads_ra=encoder.heads_ra, decoder_heads_sa=decoder.heads_sa, decoder_heads_ra=decoder.heads_ra,
        cross_heads=decoder.attentions["cross-attention"][0], n_kv_heads=kv_heads_option(attentions),
        block_size=cfg["out_block_size"], source_block_size=cfg["in_block_size"], pos="sinusoidal",
        scale_embeddings=True, final_norm=False, bias=True, tie_word_embeddings=False, lm_head_bias=True,
        out_proj="per_kind", **options, **symbols,
    )


def _spec_problems(cfg: dict[str, Any]) -> list[str]:
    """Their input/output specs: tokens only, and an output layer as wide as the target vocabulary."""
    problems = [f"{side} type={cfg[side].get('type')!r}" for side in ("input_spec", "output_spec")
                if cfg[side].get("type") != "token"]
    if not problems and cfg["out_dim"] != cfg["output_spec"]["vocab_size"]:
        problems.append(f"out_dim={cfg['out_dim']} != the target vocabulary ({cfg['output_spec']['vocab_size']})")
    return problems


def _stacks(cfg: dict[str, Any], dual: bool) -> tuple[TheirStack, TheirStack]:
    """Their encoder's and decoder's blocks, read from ``encoder_kwargs`` and ``decoder_kwargs``."""
    d_model, enc, dec = cfg["d_model"], dict(cfg["encoder_kwargs"]), dict(cfg["decoder_kwargs"])
    if dual:
        retriever = cfg["symbol_retrieval"]
        return (dual_attention_stack(enc, d_model, retriever=retriever, causal=False, causal_default=False,
                                     where="encoder_kwargs "),
                dual_attention_stack(dec, d_model, retriever=retriever, causal=True, causal_default=True,
                                     where="decoder_kwargs "))
    # their DecoderBlock is causal only when told, and its cross-attention has n_heads heads (not n_heads_cross)
    return (transformer_stack(enc, d_model, causal=False, causal_default=False, where="encoder_kwargs "),
            transformer_stack(dec, d_model, causal=True, causal_default=False, cross_heads=dec["n_heads"],
                              where="decoder_kwargs "))


def _weights(config: DATSeq2SeqConfig, sd: StateDict, dual: bool) -> StateDict:
    """Their weights under our names (their ``target_embedder.weights.*``, the unused tying, are left out)."""
    out: StateDict = {
        "encoder.embed_tokens.weight": sd["layers.source_embedder.weight"],
        "decoder.embed_tokens.weight": sd["layers.target_embedder.weight"],
    } | linear_weights(sd, "layers.final_out.", "lm_head.")
    if config.n_heads_ra or config.decoder_heads_ra:
        out |= retriever_weights(sd, "layers.symbol_retriever.", config.symbol_retrieval,
                                 positions=config.symbol_positions, bidirectional=bool(config.n_heads_ra),
                                 max_rel_pos=config.max_rel_pos)
    encoder, decoder = config.stack("encoder"), config.stack("decoder")
    for i in range(config.n_layers):
        out |= block_weights(encoder, sd, f"layers.encoder_blocks.{i}.", f"encoder.layers.{i}.", dual=dual)
    for i in range(config.decoder_layers):
        out |= block_weights(decoder, sd, f"layers.decoder_blocks.{i}.", f"decoder.layers.{i}.", dual=dual,
                             decoder=True)
    return out


def _convert(cfg: dict[str, Any], sd: StateDict, dual: bool) -> DATForSeq2SeqLM:
    config = seq2seq_config_from_authors(cfg, sd, dual=dual)
    model = DATForSeq2SeqLM(config)
    model.load_state_dict(_weights(config, sd, dual), strict=True)
    return model.eval()


def seq2seq_dat_from_authors(cfg: dict[str, Any], sd: StateDict) -> DATForSeq2SeqLM:
    """A ``DATForSeq2SeqLM`` computing their ``Seq2SeqDualAttnTransformer`` (config ``cfg``, weights ``sd``)."""
    return _convert(cfg, sd, dual=True)


def seq2seq_transformer_from_authors(cfg: dict[str, Any], sd: StateDict) -> DATForSeq2SeqLM:
    """A ``DATForSeq2SeqLM`` (no relational heads) computing their ``Seq2SeqTransformer``."""
    return _convert(cfg, sd, dual=False)
