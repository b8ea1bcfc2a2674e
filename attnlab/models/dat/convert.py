"""Load checkpoints of the authors' ``DualAttnTransformerLM`` (PyPI ``dual-attention`` 0.0.7) into DAT.

Their checkpoint is ``{'config': <DualAttnTransformerLM kwargs>, 'model': state_dict}``. The mapping is
exact (same logits up to float rounding):

- SA ``wq, wk, wv`` → ``qkv``; RA ``wq_attn, wk_attn`` → ``relational.qk``, ``wq_rel[, wk_rel]`` →
  ``relational.rel``, ``wv`` → ``relational.symbol_values``, ``wr`` (H, d_head, d_r) → ``w_r`` (H, d_r, d_head);
- their two output projections (one per head kind, concatenated) are our ``out`` and ``out_ra``
  (``out_proj="per_kind"``, the default: the same parameters as theirs), or the diagonal blocks of a single
  ``out`` (``out_proj="shared"``, off-diagonal blocks zero); attention biases they do not have are zero;
- RoPE: they rotate interleaved pairs (2k, 2k+1), we rotate halves (k, k + d/2) with the same
  frequencies, so the rows of every RoPE'd query/key head are reordered [0, 2, 4, …, 1, 3, 5, …];
- their position-relative table (2M+1 rows for offsets -M..M) keeps the causal half, by distance i-j;
- the symbol retriever they share across layers is our single ``symbol_retriever``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError
from .configuration_dat import DATConfig
from .modeling_dat import DATForCausalLM

_RETRIEVERS = {"symbolic_attention": "symbolic_attention", "positional_symbols": "positional",
               "position_relative": "position_relative"}


def dat_config_from_authors(cfg: dict[str, Any], out_proj: str = "per_kind") -> DATConfig:
    """Our ``DATConfig`` for the authors' ``DualAttnTransformerLM(**cfg)``; ConfigError for what has no twin.

    ``out_proj="shared"`` gives a model with one full output projection that starts as theirs."""
    sa_kw, ra_kw = dict(cfg.get("sa_kwargs") or {}), dict(cfg.get("ra_kwargs") or {})
    sym_kw = dict(cfg.get("symbol_retrieval_kwargs") or {})
    retriever = cfg.get("symbol_retrieval", "symbolic_attention")
    unsupported = {
        "norm_first=False (post-norm)": not cfg.get("norm_first", True),
        f"ra_type={cfg.get('ra_type')!r}": cfg.get("ra_type", "relational_attention") != "relational_attention",
        "share_attn_params=True": cfg.get("share_attn_params", False),
        "per-layer symbol retrievers": not (cfg.get("symbol_retriever_config") or {}).get("shared_symbol_retriever", True),
        f"activation={cfg.get('activation')!r}": cfg.get("activation") not in ("gelu", "swiglu"),
        f"symbol_retrieval={retriever!r}": retriever not in _RETRIEVERS,
        "different n_kv_heads for SA and RA": sa_kw.get("n_kv_heads") != ra_kw.get("n_kv_heads"),
        "key_dim != head_dim": sa_kw.get("key_dim") is not None or ra_kw.get("key_dim") is not None,
        "symbolic attention with dropout or a custom scale": bool(sym_kw.get("dropout")) or sym_kw.get("scale") is not None,
        f"rel_activation={ra_kw.get('rel_activation')!r}": ra_kw.get("rel_activation") == "softmax",
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ConfigError(f"cannot convert this DualAttnTransformerLM: {', '.join(bad)} not supported")
    d_model, heads = cfg["d_model"], cfg["n_heads_sa"] + cfg["n_heads_ra"]
    ffn = cfg["activation"]
    d_ff = cfg.get("dff") or (int(2 / 3 * 4 * d_model) if ffn == "swiglu" else 4 * d_model)
    values: dict[str, Any] = dict(
        vocab_size=cfg["vocab_size"], d_model=d_model, n_layers=cfg["n_layers"],
        n_heads_sa=cfg["n_heads_sa"], n_heads_ra=cfg["n_heads_ra"], n_kv_heads=ra_kw.get("n_kv_heads") or heads,
        d_ff=d_ff, ffn=ffn, norm=cfg.get("norm_type", "layernorm"), block_size=cfg["max_block_size"],
        pos={"pos_emb": "learned", "RoPE": "rope"}[cfg.get("pos_enc_type", "pos_emb")],
        dropout=cfg.get("dropout_rate", 0.0), bias=True, tie_word_embeddings=True,
        n_relations=ra_kw.get("n_relations") or cfg["n_heads_ra"], rel_proj_dim=ra_kw.get("rel_proj_dim"),
        symmetric_rels=bool(ra_kw.get("symmetric_rels", False)),
        rel_activation=ra_kw.get("rel_activation", "identity"), symbol_retrieval=_RETRIEVERS[retriever],
        out_proj=out_proj,
    )
    if retriever == "symbolic_attention":
        values.update(n_symbols=sym_kw["n_symbols"], symbol_heads=sym_kw["n_heads"],
                      trainable_symbols=sym_kw.get("trainable_symbols", True))
    elif retriever == "position_relative":
        values.update(max_rel_pos=sym_kw["max_rel_pos"])
    elif sym_kw["max_length"] < cfg["max_block_size"]:
        raise ConfigError("positional symbols must cover max_block_size positions")
    return DATConfig(**values)


def _rope_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved RoPE pairs to rotate-half pairs."""
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return weight.unflatten(0, (-1, head_dim))[:, order].flatten(0, 1)


def _zeros_if_missing(sd: dict, key: str, rows: int, like: torch.Tensor) -> torch.Tensor:
    return sd[key] if key in sd else like.new_zeros(rows)


def convert_authors_state_dict(
    cfg: dict[str, Any], state_dict: dict[str, torch.Tensor], out_proj: str = "per_kind"
) -> DATForCausalLM:
    """A ``DATForCausalLM`` with the weights of the authors' model (config ``cfg``, ``state_dict``)."""
    config = dat_config_from_authors(cfg, out_proj)
    sd = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict.items()}
    D, rope = config.head_dim, config.pos == "rope"
    q_k = (lambda w: _rope_rows(w, D)) if rope else (lambda w: w)  # noqa: E731
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": sd["layers.token_embedder.weight"],
        "lm_head.weight": sd["layers.final_out.weight"],
        "model.norm.weight": sd["layers.norm.weight"],
    }
    if "layers.norm.bias" in sd:
        out["model.norm.bias"] = sd["layers.norm.bias"]
    if config.pos == "learned":
        out["model.embed_positions.weight"] = sd["layers.positional_embedder.weight"]
    if config.n_heads_ra:
        out.update(_convert_retriever(config, sd))
    for i in range(config.n_layers):
        out.update(_convert_block(config, sd, i, q_k))
    model = DATForCausalLM(config)
    model.load_state_dict(out, strict=True)
    return model.eval()


def _convert_retriever(config: DATConfig, sd: dict) -> dict[str, torch.Tensor]:
    src = "layers.symbol_retrievers.0."
    if config.symbol_retrieval == "symbolic_attention":
        return {
            "symbol_retriever.q_proj.weight": sd[src + "q_proj.weight"],
            "symbol_retriever.q_proj.bias": sd[src + "q_proj.bias"],
            "symbol_retriever.templates": sd[src + "template_features"],
            "symbol_retriever.library": sd[src + "symbol_library"],
        }
    if config.symbol_retrieval == "positional":
        return {"symbol_retriever.library.weight": sd[src + "symbol_library.weight"][: config.block_size]}
    table = sd[src + "rel_pos_enc.rel_pos_embeddings"]  # row M + (j - i) for offsets -M..M
    return {"symbol_retriever.table": table[: config.max_rel_pos + 1].flip(0)}  # row d = i - j


def _convert_block(config: DATConfig, sd: dict, i: int, q_k) -> dict[str, torch.Tensor]:
    src, dst = f"layers.blocks.{i}.", f"model.layers.{i}."
    norm = dst + ("mixer.norm." if config.n_heads_ra else "mixer_norm.")
    out = {norm + "weight": sd[src + "norm1.weight"], dst + "ffn_norm.weight": sd[src + "norm2.weight"]}
    if src + "norm1.bias" in sd:
        out[norm + "bias"] = sd[src + "norm1.bias"]
        out[dst + "ffn_norm.bias"] = sd[src + "norm2.bias"]
    ff = src + "ff_block."
    if config.ffn == "swiglu":
        out[dst + "ffn.gate_up.weight"] = torch.cat([sd[ff + "linear1.weight"], sd[ff + "linear3.weight"]])
        out[dst + "ffn.gate_up.bias"] = torch.cat([sd[ff + "linear1.bias"], sd[ff + "linear3.bias"]])
    else:
        out[dst + "ffn.up.weight"], out[dst + "ffn.up.bias"] = sd[ff + "linear1.weight"], sd[ff + "linear1.bias"]
    out[dst + "ffn.down.weight"], out[dst + "ffn.down.bias"] = sd[ff + "linear2.weight"], sd[ff + "linear2.bias"]

    projections = []  # (weight, bias) of their output projection per head kind, SA first
    if config.n_heads_sa:
        a = src + "dual_attn.self_attention."
        ws = [q_k(sd[a + "wq.weight"]), q_k(sd[a + "wk.weight"]), sd[a + "wv.weight"]]
        bs = [w.new_zeros(w.shape[0]) for w in ws[:1]]
        bs += [q_k(_zeros_if_missing(sd, a + "wk.bias", ws[1].shape[0], ws[1])[:, None])[:, 0]]
        bs += [_zeros_if_missing(sd, a + "wv.bias", ws[2].shape[0], ws[2])]
        out[dst + "mixer.qkv.weight"], out[dst + "mixer.qkv.bias"] = torch.cat(ws), torch.cat(bs)
        projections.append(_projection(sd, a + "wo."))
    if config.n_heads_ra:
        r, m = src + "dual_attn.relational_attention.", dst + "mixer.relational."
        wq, wk = q_k(sd[r + "wq_attn.weight"]), q_k(sd[r + "wk_attn.weight"])
        bk = q_k(_zeros_if_missing(sd, r + "wk_attn.bias", wk.shape[0], wk)[:, None])[:, 0]
        out[m + "qk.weight"], out[m + "qk.bias"] = torch.cat([wq, wk]), torch.cat([wq.new_zeros(wq.shape[0]), bk])
        rel = [sd[r + "wq_rel.weight"]] + ([] if config.symmetric_rels else [sd[r + "wk_rel.weight"]])
        out[m + "rel.weight"] = torch.cat(rel)
        out[m + "rel.bias"] = out[m + "rel.weight"].new_zeros(out[m + "rel.weight"].shape[0])
        out[m + "symbol_values.weight"] = sd[r + "wv.weight"]
        out[m + "symbol_values.bias"] = _zeros_if_missing(sd, r + "wv.bias", sd[r + "wv.weight"].shape[0], wk)
        out[m + "w_r"] = sd[r + "wr"].transpose(1, 2)
        projections.append(_projection(sd, r + "wo."))
    if len(projections) == 2 and config.out_proj == "per_kind":
        names = ["mixer.out.", "mixer.out_ra."]
    else:  # one map over all heads: theirs are its diagonal blocks
        names = ["mixer.out."]
        projections = [(torch.block_diag(*[w for w, _ in projections]), torch.cat([b for _, b in projections]))]
    for name, (weight, bias) in zip(names, projections):
        out[dst + name + "weight"], out[dst + name + "bias"] = weight, bias
    return out


def _projection(sd: dict, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One of their output projections, with a zero bias where it has none."""
    weight = sd[prefix + "weight"]
    return weight, _zeros_if_missing(sd, prefix + "bias", weight.shape[0], weight)


def convert_dat_checkpoint(in_path: str | Path, out_dir: str | Path) -> DATForCausalLM:
    """``attnlab convert dat-checkpoint IN OUT``: the authors' ``{'config', 'model'}`` .pt → an attnlab model
    directory (``attnlab.load(OUT)`` / ``AutoModelForCausalLM.from_pretrained(OUT)``). Loads tensors and
    plain data only (``weights_only=True``), never arbitrary pickled objects."""
    ckpt = torch.load(in_path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ConfigError(f"{in_path} is not a DualAttnTransformerLM checkpoint: expected keys 'config' and 'model'")
    model = convert_authors_state_dict(ckpt["config"], ckpt["model"])
    model.save_pretrained(out_dir)
    return model
