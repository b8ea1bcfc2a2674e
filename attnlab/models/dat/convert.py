"""Load checkpoints of the ``dual-attention`` package (PyPI, 0.0.7) into attnlab models.

A checkpoint is ``{'config': <the model's constructor kwargs>, 'model': state_dict}``. ``checkpoint_kind`` reads
which of their classes wrote it from the config's keys and the weights' names:

- ``DualAttnTransformerLM`` → ``DATForCausalLM`` (this module);
- ``Seq2SeqDualAttnTransformer``, ``Seq2SeqTransformer`` → ``DATForSeq2SeqLM`` (``convert_seq2seq``);
- ``VisionDualAttnTransformer``, ``VisionTransformer`` → ``DATForImageClassification`` (``convert_vision``).

Every mapping is exact (same logits up to float rounding); the layer layouts are in ``convert_parts``. What is
the LM's own: RoPE — they rotate interleaved pairs (2k, 2k+1), we rotate halves (k, k + d/2) with the same
frequencies, so the rows of every RoPE'd query/key head are reordered [0, 2, 4, …, 1, 3, 5, …]; its
position-relative table keeps the causal half; its tied LM head and final norm are ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ...errors import ConfigError, CorruptFileError, DataError
from ...loading import check_weights, first_line
from .configuration_dat import DATConfig
from .convert_parts import (
    RETRIEVERS,
    RowMap,
    StateDict,
    block_weights,
    dual_attention_stack,
    kv_heads_option,
    merged_options,
    norm_weights,
    refuse,
    retriever_weights,
    strip_prefixes,
    symbol_options,
    unchanged,
)
from .convert_seq2seq import seq2seq_dat_from_authors, seq2seq_transformer_from_authors
from .convert_vision import vision_dat_from_authors, vision_transformer_from_authors
from .modeling_dat import DATForCausalLM

_RETRIEVERS = RETRIEVERS  # their symbol_retrieval → ours (reference.py inverts it)
_POSITIONS = {"pos_emb": "learned", "RoPE": "rope"}  # their LM's pos_enc_type → our pos

# Their model classes: the config keys each one's constructor takes (a subset suffices to tell them apart) and the
# prefix only its weights have.
_KINDS: tuple[tuple[str, frozenset[str], str], ...] = (
    ("DualAttnTransformerLM", frozenset({"vocab_size", "n_heads_sa", "n_heads_ra", "max_block_size"}),
     "layers.blocks.0.dual_attn."),
    ("Seq2SeqDualAttnTransformer", frozenset({"input_spec", "output_spec", "encoder_kwargs", "decoder_kwargs",
                                              "symbol_retrieval"}), "layers.encoder_blocks.0.dual_attn."),
    ("Seq2SeqTransformer", frozenset({"input_spec", "output_spec", "encoder_kwargs", "decoder_kwargs"}),
     "layers.encoder_blocks.0.self_attn."),
    ("VisionDualAttnTransformer", frozenset({"image_shape", "patch_size", "num_classes", "n_heads_sa", "n_heads_ra"}),
     "encoder_blocks.0.dual_attn."),
    ("VisionTransformer", frozenset({"image_shape", "patch_size", "num_classes", "n_heads"}),
     "encoder_blocks.0.self_attn."),
)


def dat_config_from_authors(cfg: dict[str, Any], out_proj: str = "per_kind") -> DATConfig:
    """Our ``DATConfig`` for the authors' ``DualAttnTransformerLM(**cfg)``; ConfigError for what has no twin.

    ``out_proj="shared"`` gives a model with one full output projection that starts as theirs."""
    retriever = cfg.get("symbol_retrieval", "symbolic_attention")
    stack = dual_attention_stack(cfg, cfg["d_model"], retriever=retriever, causal=True, causal_default=True)
    problems = stack.problems
    if not cfg.get("norm_first", True):
        problems.append("norm_first=False (post-norm)")
    if stack.shared["ffn"] == "relu":
        problems.append("activation='relu'")
    if not (cfg.get("symbol_retriever_config") or {}).get("shared_symbol_retriever", True):
        problems.append("per-layer symbol retrievers")
    symbols = symbol_options(retriever, dict(cfg.get("symbol_retrieval_kwargs") or {}), cfg["max_block_size"],
                             problems)
    refuse(problems, "DualAttnTransformerLM")
    options = merged_options({"the model": stack})
    options.pop("norm_first")
    return DATConfig(
        vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], n_layers=cfg["n_layers"],
        n_heads_sa=cfg["n_heads_sa"], n_heads_ra=cfg["n_heads_ra"], n_kv_heads=kv_heads_option(stack.attentions),
        block_size=cfg["max_block_size"], pos=_POSITIONS[cfg.get("pos_enc_type", "pos_emb")],
        bias=True, tie_word_embeddings=True, out_proj=out_proj, **options, **symbols,
    )


def _rope_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved RoPE pairs to rotate-half pairs."""
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return weight.unflatten(0, (-1, head_dim))[:, order].flatten(0, 1)


def convert_authors_state_dict(
    cfg: dict[str, Any], state_dict: dict[str, torch.Tensor], out_proj: str = "per_kind"
) -> DATForCausalLM:
    """A ``DATForCausalLM`` with the weights of the authors' model (config ``cfg``, ``state_dict``)."""
    config = dat_config_from_authors(cfg, out_proj)
    sd = strip_prefixes(state_dict)
    D = config.head_dim
    q_k: RowMap = (lambda w: _rope_rows(w, D)) if config.pos == "rope" else unchanged
    out: StateDict = {
        "model.embed_tokens.weight": sd["layers.token_embedder.weight"],
        "lm_head.weight": sd["layers.final_out.weight"],
    } | norm_weights(sd, "layers.norm.", "model.norm.")
    if config.pos == "learned":
        out["model.embed_positions.weight"] = sd["layers.positional_embedder.weight"]
    if config.n_heads_ra:
        out |= retriever_weights(sd, "layers.symbol_retrievers.0.", config.symbol_retrieval,
                                 positions=config.block_size, max_rel_pos=config.max_rel_pos)
    for i in range(config.n_layers):
        out |= block_weights(config, sd, f"layers.blocks.{i}.", f"model.layers.{i}.", dual=True,
                             per_kind=config.out_proj == "per_kind", q_k=q_k)
    model = DATForCausalLM(config)
    model.load_state_dict(out, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------ any checkpoint
def checkpoint_kind(cfg: dict[str, Any], state_dict: StateDict) -> str:
    """Which of their model classes wrote a checkpoint: its config's keys and its weights' names must both say so."""
    sd = strip_prefixes(state_dict)
    for name, keys, marker in _KINDS:
        if keys <= cfg.keys() and any(key.startswith(marker) for key in sd):
            return name
    raise ConfigError("not a checkpoint of a dual-attention model attnlab converts: its config keys and weight names "
                      "match none of " + ", ".join(name for name, _, _ in _KINDS))


_CONVERTERS = {
    "DualAttnTransformerLM": convert_authors_state_dict,
    "Seq2SeqDualAttnTransformer": seq2seq_dat_from_authors,
    "Seq2SeqTransformer": seq2seq_transformer_from_authors,
    "VisionDualAttnTransformer": vision_dat_from_authors,
    "VisionTransformer": vision_transformer_from_authors,
}


def convert_authors_checkpoint(cfg: dict[str, Any], state_dict: StateDict) -> PreTrainedModel:
    """The attnlab model (in eval mode) computing what their model of config ``cfg`` and weights ``state_dict``
    computes, whichever of their five classes it is."""
    return _CONVERTERS[checkpoint_kind(cfg, state_dict)](cfg, strip_prefixes(state_dict))


def convert_dat_checkpoint(in_path: str | Path, out_dir: str | Path) -> PreTrainedModel:
    """``attnlab convert dat-checkpoint IN OUT``: the authors' ``{'config', 'model'}`` .pt → an attnlab model
    directory (``attnlab.load(OUT)`` or the Auto class of its kind: ``AutoModelForCausalLM``,
    ``AutoModelForSeq2SeqLM``, ``AutoModelForImageClassification``). Loads tensors and plain data only
    (``weights_only=True``), never arbitrary pickled objects. A file that is not such a checkpoint, or whose
    tensors do not fit its config, is one line (``CorruptFileError``), and nothing is written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; give the converted model a new or existing directory")
    ckpt = _read_authors_checkpoint(Path(in_path))
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) or "model" not in ckpt:
        raise ConfigError(f"{in_path} is not a dual-attention checkpoint: expected keys 'config' (a dict) and 'model'")
    try:
        model = convert_authors_checkpoint(ckpt["config"], ckpt["model"])
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing key, a tensor of another shape: the file is not intact
        raise CorruptFileError(in_path, f"its tensors do not fit its config ({first_line(exc)})",
                               "convert the checkpoint the dual-attention package saved, unmodified") from None
    model.save_pretrained(out_dir)
    check_weights(out_dir, model.config)  # what was written reads back as this model
    return model


def _read_authors_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)``, every failure one line: not a file torch wrote, truncated, damaged,
    or holding objects other than tensors and plain data."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; give the checkpoint file") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError of a truncated zip, EOFError...
        raise CorruptFileError(path, f"not a readable PyTorch checkpoint ({first_line(exc)})",
                               "give the .pt file the dual-attention package saved, complete") from None
