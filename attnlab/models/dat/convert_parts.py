"""What converting the ``dual-attention`` package's (0.0.7) checkpoints shares across its model classes.

Their language, sequence-to-sequence and vision models are built from the same parts: ``DualAttention``
(``self_attention`` and ``relational_attention``), ``Attention`` (the baselines' heads, cross-attention),
``FeedForwardBlock`` (``linear1``/``linear2``/``linear3``), norms and one shared symbol retriever. The functions
here map one such part's weights to ours, and read the keyword arguments their blocks were built with into the
options of our configs (``TheirStack``), listing what has no attnlab twin.

Weight layouts (the mapping is exact):

- ``wq, wk, wv`` → ``qkv``; RA ``wq_attn, wk_attn`` → ``relational.qk``, ``wq_rel[, wk_rel]`` → ``relational.rel``,
  ``wv`` → ``relational.symbol_values``, ``wr`` (H, d_head, d_r) → ``w_r`` (H, d_r, d_head); cross-attention
  ``wq`` → ``cross.q``, ``wk, wv`` → ``cross.kv``;
- their two output projections (one per head kind) are our ``out`` and ``out_ra`` (``out_proj="per_kind"``) or the
  diagonal blocks of one ``out``; biases they do not have (query maps never have one) are zero;
- their relative-symbol table has row M + (j − i) for the offset j − i; ours row M + (i − j) (both signs, an
  encoder's) or row i − j (offsets ≥ 0 only, causal): the table flipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import ConfigError
from ...layers.relational import RELATION_ACTIVATIONS

StateDict = dict[str, torch.Tensor]
RowMap = Callable[[torch.Tensor], torch.Tensor]

RETRIEVERS = {"symbolic_attention": "symbolic_attention", "positional_symbols": "positional",
              "position_relative": "position_relative"}
FFNS = ("relu", "gelu", "swiglu")  # their activations our FFNs compute exactly (their GELU is the tanh one, as ours)
NORMS = ("layernorm", "rmsnorm")


def unchanged(weight: torch.Tensor) -> torch.Tensor:
    return weight


# ------------------------------------------------------------------------------------------ weights
def strip_prefixes(state_dict: StateDict) -> StateDict:
    """Their weights without the prefixes ``torch.compile`` (``_orig_mod.``) and DDP (``module.``) add."""
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state_dict.items()}


def zeros_if_missing(sd: StateDict, key: str, rows: int, like: torch.Tensor) -> torch.Tensor:
    """``sd[key]``, or the zero bias that computes what a layer of theirs without one computes."""
    return sd[key] if key in sd else like.new_zeros(rows)


def projection(sd: StateDict, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One of their output projections, with a zero bias where it has none."""
    weight = sd[prefix + "weight"]
    return weight, zeros_if_missing(sd, prefix + "bias", weight.shape[0], weight)


def norm_weights(sd: StateDict, src: str, dst: str) -> StateDict:
    """A LayerNorm (weight, bias) or RMSNorm (weight) under our name."""
    out = {dst + "weight": sd[src + "weight"]}
    if src + "bias" in sd:
        out[dst + "bias"] = sd[src + "bias"]
    return out


def linear_weights(sd: StateDict, src: str, dst: str) -> StateDict:
    """A linear layer under our name, with a zero bias where theirs has none."""
    weight, bias = projection(sd, src)
    return {dst + "weight": weight, dst + "bias": bias}


def ffn_weights(sd: StateDict, src: str, dst: str, ffn: str) -> StateDict:
    """Their ``FeedForwardBlock``: ``linear1`` (gate for SwiGLU), ``linear3`` (SwiGLU's up), ``linear2`` (down)."""
    out = linear_weights(sd, src + "linear2.", dst + "down.")
    if ffn != "swiglu":
        return out | linear_weights(sd, src + "linear1.", dst + "up.")
    gate, up = projection(sd, src + "linear1."), projection(sd, src + "linear3.")
    return out | {dst + "gate_up.weight": torch.cat([gate[0], up[0]]),
                  dst + "gate_up.bias": torch.cat([gate[1], up[1]])}


def _qk_bias(sd: StateDict, key: str, q: torch.Tensor, k: torch.Tensor, q_k: RowMap) -> torch.Tensor:
    """[zero query bias ; their key bias], the key bias's rows reordered as the key's (RoPE)."""
    bk = q_k(zeros_if_missing(sd, key, k.shape[0], k)[:, None])[:, 0]
    return torch.cat([q.new_zeros(q.shape[0]), bk])


def attention_weights(sd: StateDict, src: str, dst: str, q_k: RowMap = unchanged) -> StateDict:
    """Their ``Attention`` (``wq``, ``wk``, ``wv``) as our ``qkv``; its output projection is mapped apart."""
    wq, wk, wv = q_k(sd[src + "wq.weight"]), q_k(sd[src + "wk.weight"]), sd[src + "wv.weight"]
    bv = zeros_if_missing(sd, src + "wv.bias", wv.shape[0], wv)
    return {dst + "qkv.weight": torch.cat([wq, wk, wv]),
            dst + "qkv.bias": torch.cat([_qk_bias(sd, src + "wk.bias", wq, wk, q_k), bv])}


def relational_weights(sd: StateDict, src: str, dst: str, *, symmetric: bool, q_k: RowMap = unchanged) -> StateDict:
    """Their ``RelationalAttention`` as our ``relational`` module; its output projection is mapped apart."""
    wq, wk = q_k(sd[src + "wq_attn.weight"]), q_k(sd[src + "wk_attn.weight"])
    rel = torch.cat([sd[src + "wq_rel.weight"]] + ([] if symmetric else [sd[src + "wk_rel.weight"]]))
    return {
        dst + "qk.weight": torch.cat([wq, wk]),
        dst + "qk.bias": _qk_bias(sd, src + "wk_attn.bias", wq, wk, q_k),
        dst + "rel.weight": rel,
        dst + "rel.bias": rel.new_zeros(rel.shape[0]),
        dst + "symbol_values.weight": sd[src + "wv.weight"],
        dst + "symbol_values.bias": zeros_if_missing(sd, src + "wv.bias", sd[src + "wv.weight"].shape[0], wq),
        dst + "w_r": sd[src + "wr"].transpose(1, 2),
    }


def mixer_weights(
    sd: StateDict, sa_src: str | None, ra_src: str | None, dst: str, *, symmetric: bool = False,
    per_kind: bool = True, q_k: RowMap = unchanged,
) -> StateDict:
    """One of their token mixers as our ``DualAttention`` at ``dst``: SA heads from the ``Attention`` at ``sa_src``
    (a dual attention's ``self_attention.`` or a baseline block's ``self_attn.``), RA heads from ``ra_src``; None
    where that kind has no heads. ``per_kind``: our ``out``/``out_ra`` (else their projections are the diagonal
    blocks of one ``out``)."""
    out: StateDict = {}
    projections = []  # (weight, bias) of their output projection per head kind, SA first
    if sa_src is not None:
        out |= attention_weights(sd, sa_src, dst, q_k)
        projections.append(projection(sd, sa_src + "wo."))
    if ra_src is not None:
        out |= relational_weights(sd, ra_src, dst + "relational.", symmetric=symmetric, q_k=q_k)
        projections.append(projection(sd, ra_src + "wo."))
    if len(projections) == 2 and per_kind:
        names = ["out.", "out_ra."]
    else:  # one map over all heads: theirs are its diagonal blocks
        names = ["out."]
        projections = [(torch.block_diag(*[w for w, _ in projections]), torch.cat([b for _, b in projections]))]
    for name, (weight, bias) in zip(names, projections):
        out[dst + name + "weight"], out[dst + name + "bias"] = weight, bias
    return out


def block_weights(
    config, sd: StateDict, src: str, dst: str, *, dual: bool, decoder: bool = False, per_kind: bool = True,
    q_k: RowMap = unchanged,
) -> StateDict:
    """One of their blocks at ``src`` as ours at ``dst``; ``config`` is the config (or ``StackView``) its layer is
    built from. ``dual``: a dual-attention block (``dual_attn.``), else a baseline's (``self_attn.``); ``decoder``:
    with cross-attention. Their norm1 is the mixer's pre-norm (``mixer.norm`` when the mixer owns it, as with
    relational heads in a pre-norm block) or the post-norm after it; norm2 the cross-attention's (decoder) or
    the FFN's; norm3 the decoder's FFN's."""
    owns_norm = config.n_heads_ra > 0 and getattr(config, "norm_first", True)  # the LM is always pre-norm
    attn = src + "dual_attn." if dual else src
    sa = (attn + "self_attention." if dual else src + "self_attn.") if config.n_heads_sa else None
    ra = attn + "relational_attention." if config.n_heads_ra else None
    out = norm_weights(sd, src + "norm1.", dst + ("mixer.norm." if owns_norm else "mixer_norm."))
    out |= mixer_weights(sd, sa, ra, dst + "mixer.", symmetric=config.symmetric_rels, per_kind=per_kind, q_k=q_k)
    if decoder:
        out |= norm_weights(sd, src + "norm2.", dst + "cross_norm.") | cross_attention_weights(sd, src + "cross_attn.",
                                                                                             dst + "cross.")
    out |= norm_weights(sd, src + ("norm3." if decoder else "norm2."), dst + "ffn_norm.")
    return out | ffn_weights(sd, src + "ff_block.", dst + "ffn.", config.ffn)


def cross_attention_weights(sd: StateDict, src: str, dst: str) -> StateDict:
    """Their cross ``Attention`` as our ``CrossAttention``: ``q``, ``kv`` = [k ; v], ``out``."""
    wk, wv = sd[src + "wk.weight"], sd[src + "wv.weight"]
    return {
        dst + "q.weight": sd[src + "wq.weight"],
        dst + "q.bias": wk.new_zeros(sd[src + "wq.weight"].shape[0]),
        dst + "kv.weight": torch.cat([wk, wv]),
        dst + "kv.bias": torch.cat([zeros_if_missing(sd, src + "wk.bias", wk.shape[0], wk),
                                    zeros_if_missing(sd, src + "wv.bias", wv.shape[0], wv)]),
    } | linear_weights(sd, src + "wo.", dst + "out.")


def retriever_weights(
    sd: StateDict, src: str, kind: str, *, positions: int = 0, bidirectional: bool = False, max_rel_pos: int = 0
) -> StateDict:
    """Their shared symbol retriever at ``src`` as our ``symbol_retriever`` of ``kind`` (ours): the first
    ``positions`` rows of a positional library; a relative table flipped (whole, or its causal half)."""
    if kind == "symbolic_attention":
        return {
            "symbol_retriever.q_proj.weight": sd[src + "q_proj.weight"],
            "symbol_retriever.q_proj.bias": sd[src + "q_proj.bias"],
            "symbol_retriever.templates": sd[src + "template_features"],
            "symbol_retriever.library": sd[src + "symbol_library"],
        }
    if kind == "positional":
        return {"symbol_retriever.library.weight": sd[src + "symbol_library.weight"][:positions]}
    table = sd[src + "rel_pos_enc.rel_pos_embeddings"]  # theirs: row M + (j - i) for offsets -M..M
    return {"symbol_retriever.table": (table if bidirectional else table[: max_rel_pos + 1]).flip(0)}


# ------------------------------------------------------------------------------------------ options
@dataclass
class TheirStack:
    """One stack of their blocks as our configs see it.

    ``attentions``: each attention's (query heads, their n_kv_heads or None); ``shared``: the block options our
    configs hold once for every stack (FFN, norm, dropout); ``relations``: the relation options, shared too (empty
    without relational heads); ``problems``: what has no attnlab twin, one phrase each.
    """

    heads_sa: int
    heads_ra: int
    attentions: dict[str, tuple[int, int | None]]
    shared: dict[str, Any]
    relations: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _block_options(kwargs: dict[str, Any], d_model: int, where: str, problems: list[str]) -> dict[str, Any]:
    """FFN, norm and dropout of a block built with ``kwargs``; their default dff where it is None."""
    activation, norm = kwargs.get("activation"), kwargs.get("norm_type", "layernorm")
    if activation not in FFNS:
        problems.append(f"{where}activation={activation!r}")
    if norm not in NORMS:
        problems.append(f"{where}norm_type={norm!r}")
    d_ff = kwargs.get("dff") or (int(2 / 3 * 4 * d_model) if activation == "swiglu" else 4 * d_model)
    return dict(d_ff=d_ff, ffn=activation, norm=norm, norm_first=bool(kwargs["norm_first"]),
                dropout=kwargs.get("dropout_rate", 0.0))


def _check_causal(kwargs: dict[str, Any], default: bool, causal: bool, where: str, problems: list[str]) -> None:
    if bool(kwargs.get("causal", default)) != causal:
        problems.append(f"{where}causal={kwargs.get('causal', default)!r} (attnlab's "
                        f"{'decoders are' if causal else 'encoders are not'} causal)")


def _check_key_dim(where: str, problems: list[str], **attention_kwargs: dict[str, Any] | None) -> None:
    for name, kwargs in attention_kwargs.items():
        if (kwargs or {}).get("key_dim") is not None:
            problems.append(f"{where}{name} key_dim (query/key width != head width)")


def dual_attention_stack(
    kwargs: dict[str, Any], d_model: int, *, retriever: str, causal: bool, causal_default: bool, where: str = ""
) -> TheirStack:
    """The blocks built from ``kwargs`` (a ``DualAttnEncoderBlock``/``DualAttnDecoderBlock``'s, or the LM's):
    their heads and options, with ``where`` (e.g. "encoder_kwargs ") naming them in problems."""
    sa, ra = kwargs["n_heads_sa"], kwargs["n_heads_ra"]
    sa_kw, ra_kw, cross_kw = (dict(kwargs.get(k) or {}) for k in ("sa_kwargs", "ra_kwargs", "cross_kwargs"))
    problems: list[str] = []
    stack = TheirStack(sa, ra, {}, _block_options(kwargs, d_model, where, problems), problems=problems)
    _check_causal(kwargs, causal_default, causal, where, problems)
    _check_key_dim(where, problems, sa_kwargs=sa_kw, ra_kwargs=ra_kw, cross_kwargs=cross_kw)
    if kwargs.get("share_attn_params", False):
        problems.append(f"{where}share_attn_params=True")
    if sa:
        stack.attentions["self-attention"] = (sa, sa_kw.get("n_kv_heads"))
    if "n_heads_cross" in kwargs:
        stack.attentions["cross-attention"] = (kwargs["n_heads_cross"], cross_kw.get("n_kv_heads"))
    if ra:
        stack.attentions["relational"] = (ra, ra_kw.get("n_kv_heads"))
        stack.relations = _relations(ra_kw, d_model // (sa + ra), ra, retriever, where, problems)
        if kwargs.get("ra_type", "relational_attention") != "relational_attention":
            problems.append(f"{where}ra_type={kwargs['ra_type']!r}")
    return stack


def _relations(
    ra_kw: dict[str, Any], head_dim: int, ra: int, retriever: str, where: str, problems: list[str]
) -> dict[str, Any]:
    """Our relation options for their ``ra_kwargs`` (their defaults resolved: d_r = RA heads, maps as wide as them)."""
    n_relations = ra_kw.get("n_relations") or ra
    activation = ra_kw.get("rel_activation", "identity")
    if activation not in RELATION_ACTIVATIONS:
        problems.append(f"{where}rel_activation={activation!r}")
    relative = bool(ra_kw.get("use_relative_positional_symbols", False))
    if relative != (retriever == "position_relative"):
        problems.append(f"{where}use_relative_positional_symbols={relative} with symbol_retrieval={retriever!r}")
    return dict(n_relations=n_relations, rel_proj_dim=ra_kw.get("rel_proj_dim") or head_dim * ra // n_relations,
                symmetric_rels=bool(ra_kw.get("symmetric_rels", False)), rel_activation=activation)


def transformer_stack(
    kwargs: dict[str, Any], d_model: int, *, causal: bool, causal_default: bool, cross_heads: int | None = None,
    where: str = "",
) -> TheirStack:
    """The blocks of a baseline (``EncoderBlock``/``DecoderBlock``) built from ``kwargs``; ``cross_heads``: the
    heads of a decoder block's cross-attention (theirs has ``n_heads`` whatever ``n_heads_cross`` says)."""
    attn_kw = dict(kwargs.get("attn_kwargs") or {})
    problems: list[str] = []
    stack = TheirStack(kwargs["n_heads"], 0, {"self-attention": (kwargs["n_heads"], attn_kw.get("n_kv_heads"))},
                       _block_options(kwargs, d_model, where, problems), problems=problems)
    _check_causal(kwargs, causal_default, causal, where, problems)
    _check_key_dim(where, problems, attn_kwargs=attn_kw)
    if cross_heads is not None:
        stack.attentions["cross-attention"] = (cross_heads, None)
    return stack


def kv_heads_option(attentions: dict[str, tuple[int, int | None]]) -> int | None:
    """The one ``n_kv_heads`` under which each attention (name → (query heads, their n_kv_heads)) keeps its key/value
    heads, each taking min(n_kv_heads, its heads); None when all are MHA. ConfigError when none does."""
    kv = {name: (heads, heads if n_kv is None else n_kv) for name, (heads, n_kv) in attentions.items() if heads}
    grouped = {n_kv for heads, n_kv in kv.values() if n_kv < heads}
    if not grouped:
        return None
    value = grouped.pop()
    if grouped or any(min(value, heads) != n_kv for heads, n_kv in kv.values()):
        given = ", ".join(f"{name} {heads} heads / {n_kv}" for name, (heads, n_kv) in kv.items())
        raise ConfigError(f"these key/value heads ({given}) are not min(n_kv_heads, heads) for one n_kv_heads, "
                          "which attnlab's configs take")
    return value


def merged_options(stacks: dict[str, TheirStack]) -> dict[str, Any]:
    """The options our config holds once for all ``stacks`` (name → stack); ConfigError where two differ."""
    seen: dict[str, tuple[str, Any]] = {}
    for name, stack in stacks.items():
        for option, value in (stack.shared | stack.relations).items():
            first, before = seen.setdefault(option, (name, value))
            if before != value:
                raise ConfigError(f"{first} and {name} differ in {option} ({before!r} vs {value!r}); attnlab's "
                                  "configs share it")
    return {option: value for option, (_, value) in seen.items()}


def symbol_options(retriever: str, sym_kw: dict[str, Any], positions: int, problems: list[str]) -> dict[str, Any]:
    """Our symbol options for their ``symbol_retrieval`` and its kwargs; ``positions``: what a positional
    library must cover."""
    if retriever not in RETRIEVERS:
        problems.append(f"symbol_retrieval={retriever!r}")
        return {}
    if sym_kw.get("dropout") or sym_kw.get("scale") is not None:
        problems.append("symbolic attention with dropout or a custom scale")
    if retriever == "symbolic_attention":
        return dict(symbol_retrieval="symbolic_attention", n_symbols=sym_kw["n_symbols"],
                    symbol_heads=sym_kw["n_heads"], trainable_symbols=sym_kw.get("trainable_symbols", True))
    if retriever == "position_relative":
        return dict(symbol_retrieval="position_relative", max_rel_pos=sym_kw["max_rel_pos"])
    if sym_kw["max_length"] < positions:
        problems.append(f"positional symbols for {sym_kw['max_length']} positions (the model takes {positions})")
    return dict(symbol_retrieval="positional")


def refuse(problems: list[str], what: str) -> None:
    """One ConfigError naming every setting of their ``what`` that has no attnlab twin."""
    if problems:
        raise ConfigError(f"cannot convert this {what}: {', '.join(problems)} not supported")


def count_blocks(sd: StateDict, prefix: str) -> int:
    """How many blocks ``prefix{i}.`` the weights hold: a stack's real depth, whatever its config says."""
    indices = {int(key[len(prefix):].split(".", 1)[0]) for key in sd if key.startswith(prefix)}
    return max(indices) + 1 if indices else 0
