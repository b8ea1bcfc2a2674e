"""Load the ``dual-attention`` package's (0.0.7) ``VisionDualAttnTransformer`` and ``VisionTransformer``
checkpoints into ``DATForImageClassification`` (layer layouts: ``convert_parts``).

Their patch embedding (``to_patch_embedding``: LayerNorm, Linear, LayerNorm over patches in raster order, each
flattened as (p, p, channels)), CLS token, learned positions and pooling (``pool``) are ours; their encoder has
no final norm (``final_norm=False``); their patch projection always has a bias and their attention maps mostly
none, so the converted model has biases (``bias=True``), zero where theirs have none. Their ``image_shape``
(channels, a, b) is read as images of shape (channels, a, b), what their patching takes (a rows of pixels);
their patches must be square, as ours.
"""

from __future__ import annotations

from typing import Any

from .configuration_dat_vision import DATVisionConfig
from .convert_parts import (
    StateDict,
    block_weights,
    dual_attention_stack,
    kv_heads_option,
    linear_weights,
    merged_options,
    norm_weights,
    refuse,
    retriever_weights,
    symbol_options,
    transformer_stack,
)
from .modeling_dat_vision import DATForImageClassification


def vision_config_from_authors(cfg: dict[str, Any], *, dual: bool) -> DATVisionConfig:
    """Our config for their ``VisionDualAttnTransformer(**cfg)`` (``dual``) or ``VisionTransformer(**cfg)``;
    ConfigError naming what has no twin."""
    channels, height, width = cfg["image_shape"]
    patch_width, patch_height = cfg["patch_size"]
    d_model = cfg["d_model"]
    if dual:
        retriever = cfg["symbol_retrieval"]
        stack = dual_attention_stack(cfg, d_model, retriever=retriever, causal=False, causal_default=False)
    else:
        stack = transformer_stack(cfg, d_model, causal=False, causal_default=False)
    problems = stack.problems
    if patch_width != patch_height:
        problems.append(f"patch_size={tuple(cfg['patch_size'])} (attnlab's patches are square)")
    symbols: dict[str, Any] = {}
    if stack.heads_ra:
        positions = (height // patch_height) * (width // patch_width) + 1
        symbols = symbol_options(retriever, dict(cfg.get("symbol_retrieval_kwargs") or {}), positions, problems)
    refuse(problems, "VisionDualAttnTransformer" if dual else "VisionTransformer")
    return DATVisionConfig(
        image_size=[height, width], patch_size=patch_height, num_channels=channels, num_labels=cfg["num_classes"],
        d_model=d_model, n_layers=cfg["n_layers"], n_heads_sa=stack.heads_sa, n_heads_ra=stack.heads_ra,
        n_kv_heads=kv_heads_option(stack.attentions), pooling=cfg.get("pool", "cls"), final_norm=False, pos="learned",
        bias=True, out_proj="per_kind", **merged_options({"the model": stack}), **symbols,
    )


def _weights(config: DATVisionConfig, sd: StateDict, dual: bool) -> StateDict:
    """Their weights under our names: ``to_patch_embedding.1/2/3`` are the patch norm, projection and norm."""
    out: StateDict = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings.weight": sd["pos_embedding"][0],
    }
    out |= norm_weights(sd, "to_patch_embedding.1.", "embeddings.patches.patch_norm.")
    out |= linear_weights(sd, "to_patch_embedding.2.", "embeddings.patches.proj.")
    out |= norm_weights(sd, "to_patch_embedding.3.", "embeddings.patches.norm.")
    out |= linear_weights(sd, "final_out.", "classifier.")
    if config.n_heads_ra:
        out |= retriever_weights(sd, "symbol_retriever.", config.symbol_retrieval, positions=config.block_size,
                                 bidirectional=True)
    for i in range(config.n_layers):
        out |= block_weights(config, sd, f"encoder_blocks.{i}.", f"encoder.layers.{i}.", dual=dual)
    return out


def _convert(cfg: dict[str, Any], sd: StateDict, dual: bool) -> DATForImageClassification:
    config = vision_config_from_authors(cfg, dual=dual)
    model = DATForImageClassification(config)
    model.load_state_dict(_weights(config, sd, dual), strict=True)
    return model.eval()


def vision_dat_from_authors(cfg: dict[str, Any], sd: StateDict) -> DATForImageClassification:
    """A ``DATForImageClassification`` computing their ``VisionDualAttnTransformer`` (config ``cfg``, weights
    ``sd``)."""
    return _convert(cfg, sd, dual=True)


def vision_transformer_from_authors(cfg: dict[str, Any], sd: StateDict) -> DATForImageClassification:
    """A ``DATForImageClassification`` (no relational heads) computing their ``VisionTransformer``."""
    return _convert(cfg, sd, dual=False)
