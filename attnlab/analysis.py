"""Look inside an attnlab model: per layer and head, what each family's mechanism does on one prompt.

``analyze(model, tokenizer, prompt)`` runs one forward pass (plus family hooks) and returns plain, JSON-ready
Python data (lists of floats, no tensors), so the same result feeds the web app (``attnlab viz``), a notebook,
or a file (``export_json``). Everything is recomputed from the model's own modules and weights through forward
hooks; no model code is changed, so what you see is exactly what the forward pass computed.

Per layer, depending on the family:

- ``attention``: softmax attention maps (heads, queries, keys); rows sum to 1. GPT heads; DAT self-attention
  *and* relational heads (α); LSW over [registers; memory; tokens]; MoA the metric MHA probabilities.
- ``relations`` (DAT): r(x_i, x_j) per relation dimension ℓ as (d_r, T, T) heatmaps (future keys are null).
- ``symbols`` (DAT): the symbol each token retrieves: symbolic attention weights over the library
  (symbol heads, T, n_symbols; rows sum to 1), or the positional / relative index.
- ``importance`` (LEAP): α[i, l], the weight of token l in position i's windowed summary (rows sum to 1),
  plus the focus logits.
- ``routing`` (MoA): router weights over head types (T, 4; rows sum to 1), gates, FFN branch weights (T, 3),
  and ``balls``: per metric head the keys its ball prunes.

Plus ``next_token``: the top-k next-token distribution at every position (``position`` selects the default).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ConfigError
from .layers.attention import split_heads

DIGITS = 5  # rounding of exported floats: plenty for a heatmap, keeps the JSON small


def _round(t: torch.Tensor) -> Any:
    """Tensor → nested lists of rounded floats; non-finite entries become None (JSON null)."""
    t = t.detach().double().cpu()
    finite = torch.isfinite(t)
    values = t.round(decimals=DIGITS).tolist()
    if bool(finite.all()):
        return values
    mask = finite.tolist()

    def clean(v, m):
        return [clean(a, b) for a, b in zip(v, m)] if isinstance(v, list) else (v if m else None)

    return clean(values, mask)


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """A readable label per token (byte tokens decode to their character; invalid UTF-8 pieces to \\xNN)."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i])
        if "\ufffd" in text or text == "":
            piece = tokenizer.convert_ids_to_tokens(i) or ""
            raw = [_BYTE_OF.get(c) for c in piece]
            text = "".join(f"\\x{b:02X}" for b in raw) if piece and None not in raw else (piece or f"<{i}>")
        labels.append(text)
    return labels


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte → printable-character map, to show partial UTF-8 byte tokens as \\xNN."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_OF = _byte_decoder()


def family_of(model) -> str:
    from .models.registry import family_of_config

    return family_of_config(model.config).name


def encode(tokenizer, prompt: str, *, max_tokens: int | None = None) -> torch.Tensor:
    """(1, T) ids of the prompt; a clear error when it is empty or longer than ``max_tokens``."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise ConfigError("the prompt encodes to no tokens")
    if max_tokens is not None and ids.shape[1] > max_tokens:
        raise ConfigError(f"the prompt is {ids.shape[1]} tokens long; the limit is {max_tokens} tokens")
    return ids


@contextmanager
def _hooks(pairs: list[tuple[torch.nn.Module, Any]]) -> Iterator[None]:
    """Register forward hooks (with kwargs) for the duration of a block."""
    handles = [m.register_forward_hook(fn, with_kwargs=True) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def analyze(model, tokenizer, prompt: str, *, position: int | None = None, top_k: int = 10,
            max_tokens: int | None = None) -> dict[str, Any]:
    """Everything the app shows for one prompt, as JSON-ready data (see the module docstring).

    ``position`` (default: the last token, negative counts from the end) selects ``next_token``; the top-k of
    every position is in ``next_token_all``. ``max_tokens`` rejects longer prompts with a ``ConfigError``.
    """
    model.eval()
    device = next(model.parameters()).device
    ids = encode(tokenizer, prompt, max_tokens=max_tokens)
    limit = model.config.block_size
    if model.config.pos == "learned" and ids.shape[1] > limit:
        raise ConfigError(f"the prompt is {ids.shape[1]} tokens; this model's context is {limit} tokens")
    T = ids.shape[1]
    pos = T - 1 if position is None else position
    if not -T <= pos < T:
        raise ConfigError(f"position {position} is outside the prompt (0..{T - 1})")
    pos %= T
    family = family_of(model)
    collect = {"dat": _dat_hooks, "moa": _moa_hooks}.get(family)
    records: dict[str, Any] = {}
    pairs = collect(model, records) if collect else []
    with _hooks(pairs):
        out = model(ids.to(device), output_attentions=True, use_cache=False)
    ids_list = ids[0].tolist()
    tokens = token_labels(tokenizer, ids_list)
    probs = out.logits[0].float().softmax(-1)
    k = max(1, min(top_k, probs.shape[-1]))
    top = probs.topk(k, dim=-1)
    all_topk = [
        [{"id": int(i), "token": token_labels(tokenizer, [int(i)])[0], "prob": round(float(p), DIGITS)}
         for p, i in zip(top.values[t], top.indices[t])]
        for t in range(T)
    ]
    layers = []
    attentions = out.attentions or ()
    for index in range(model.config.n_layers):
        layer: dict[str, Any] = {"layer": index}
        weights = attentions[index] if index < len(attentions) else None
        if family == "leap":
            layer["focus_logits"] = _round(weights[0]) if weights is not None else None
        elif weights is not None:
            layer["attention"] = _attention_entry(model, family, weights[0], tokens)
        layers.append(layer)
    if family == "leap":
        windows = list(model.config.layer_windows)
        for layer, alpha, window in zip(layers, model.explain(ids.to(device)), windows):
            layer["importance"] = {"weights": _round(alpha[0]), "window": window,
                                   "head_labels": [f"head {h}" for h in range(alpha.shape[1])]}
    elif family == "dat":
        for layer, entry in zip(layers, records.get("dat", [])):
            layer.update(entry)
    elif family == "moa":
        _moa_finish(model, layers, records, tokens)
    return {
        "family": family,
        "model_type": model.config.model_type,
        "n_layers": model.config.n_layers,
        "n_heads": model.config.n_heads,
        "prompt": prompt,
        "ids": ids_list,
        "tokens": tokens,
        "position": pos,
        "top_k": k,
        "next_token": {"position": pos, "top": all_topk[pos]},
        "next_token_all": all_topk,
        "layers": layers,
    }


def _attention_entry(model, family: str, weights: torch.Tensor, tokens: list[str]) -> dict[str, Any]:
    """Softmax maps (heads, T, S) with head and key labels (LSW keys: registers, memory, then tokens)."""
    H, T, S = weights.shape
    keys = list(tokens)
    heads = [f"head {h}" for h in range(H)]
    if family == "lsw":
        registers = model.config.n_registers
        memory = S - T - registers
        keys = [f"[reg {r}]" for r in range(registers)] + [f"[mem {m}]" for m in range(memory)] + keys
    elif family == "dat":
        n_sa = model.config.n_heads_sa
        heads = [f"SA {h}" for h in range(n_sa)] + [f"RA {h}" for h in range(H - n_sa)]
    elif family == "moa":
        heads = [f"metric MHA {h}" for h in range(H)]
    return {"weights": _round(weights), "head_labels": heads, "key_labels": keys}


# ------------------------------------------------------------------------------------------------ DAT
def _dat_hooks(model, records: dict[str, Any]) -> list[tuple[torch.nn.Module, Any]]:
    """Recompute, from each layer's weights and inputs, the relation vectors and the retrieved symbols."""
    from .layers.relational import RELATION_ACTIVATIONS, RelationalAttention
    from .layers.symbols import PositionalSymbols, RelativeSymbols, SymbolicAttention

    entries: list[dict[str, Any]] = []
    records["dat"] = entries
    pending: dict[str, Any] = {}

    def on_symbols(module, args, kwargs, output):
        x, ctx = args[0], args[1] if len(args) > 1 else kwargs.get("ctx")
        if isinstance(module, SymbolicAttention):
            q = module.q_proj(x)[0]  # (T, d)
            H = module.n_heads
            qh = q.view(q.shape[0], H, -1).transpose(0, 1)  # (H, T, dh)
            th = module.templates.to(q.dtype).view(module.templates.shape[0], H, -1).transpose(0, 1)
            w = (qh @ th.transpose(-2, -1) / math.sqrt(qh.shape[-1])).softmax(-1)  # (H, T, n_symbols)
            pending["symbols"] = {"kind": "symbolic_attention", "weights": _round(w),
                                  "assigned": w.argmax(-1).tolist(),
                                  "head_labels": [f"symbol head {h}" for h in range(H)]}
        elif isinstance(module, PositionalSymbols):
            pending["symbols"] = {"kind": "positional", "assigned": [ctx.position_ids[0].tolist()]}
        elif isinstance(module, RelativeSymbols):
            pending["symbols"] = {"kind": "position_relative", "max_rel_pos": module.max_rel_pos}

    def on_relational(module, args, kwargs, output):
        x = args[0]
        q_rel, k_rel = module._relation_maps(x)
        T, L, P = x.shape[1], module.n_relations, module.rel_proj_dim
        q_l = q_rel[0].view(T, L, P).transpose(0, 1)
        k_l = k_rel[0].view(T, L, P).transpose(0, 1)
        r = q_l @ k_l.transpose(-2, -1) / math.sqrt(P)  # (d_r, T, T)
        act = RELATION_ACTIVATIONS[module.activation]
        if act is not None:
            r = act(r)
        future = torch.ones(T, T, dtype=torch.bool, device=r.device).triu(1)
        r = r.masked_fill(future, float("nan"))
        entry = {"relations": {"values": _round(r), "labels": [f"relation {l}" for l in range(L)],
                               "activation": module.activation, "symmetric": module.symmetric}}
        if "symbols" in pending:
            entry["symbols"] = pending.pop("symbols")
        entries.append(entry)

    pairs = []
    retriever = getattr(model, "symbol_retriever", None)
    if retriever is not None:
        pairs.append((retriever, on_symbols))
    pairs += [(m, on_relational) for m in model.modules() if isinstance(m, RelationalAttention)]
    return pairs


# ------------------------------------------------------------------------------------------------ MoA
def _moa_hooks(model, records: dict[str, Any]) -> list[tuple[torch.nn.Module, Any]]:
    """Router weights and gates, FFN branch weights, and each metric head's ball membership per key."""
    from .layers.metric_attention import MetricAttention

    records.update(heads=[], gates=[], branches=[], branch_probs=[], balls={})

    def on_router(module, args, kwargs, routing):
        records["heads"].append(routing.weights[0].float())
        records["gates"].append(routing.gates[0].float())

    def on_ffn(module, args, kwargs, output):
        x = args[0]
        records["branches"].append(module.branch_weights(x)[0].float())
        probs = module.router(x).float().softmax(-1) if module.router is not None else None
        records["branch_probs"].append(probs[0] if probs is not None else None)

    def on_metric(name):
        def hook(module, args, kwargs, output):
            if not module.use_balls:
                return
            _, k, _ = split_heads(module.qkv(args[0]), module.n_heads, module.n_kv_heads, module.head_dim)
            if module.rotary is not None:
                from .layers.rotary import apply_rotary

                ctx = args[1] if len(args) > 1 else kwargs["ctx"]
                k = apply_rotary(k, *module.rotary(ctx.position_ids))
            inside = torch.isfinite(module.ball_bias(k))[0, :, 0]  # (H, S)
            records["balls"][name] = inside
        return hook

    pairs = []
    for layer in model.model.layers:
        pairs.append((layer.mixer.router, on_router))
        pairs.append((layer.ffn, on_ffn))
        for kind, head in layer.mixer.heads.items():
            if isinstance(head, MetricAttention):
                pairs.append((head, on_metric(f"{len(pairs)}:{kind}")))
    return pairs


def _moa_finish(model, layers: list[dict[str, Any]], records: dict[str, Any], tokens: list[str]) -> None:
    from .layers.hyperffn import BRANCHES
    from .models.moa.modeling_moa import HEAD_TYPES

    ball_items = list(records["balls"].items())
    per_layer = len(ball_items) // max(1, len(layers))
    for index, layer in enumerate(layers):
        routing = {"head_types": list(HEAD_TYPES), "heads": _round(records["heads"][index]),
                   "gates": _round(records["gates"][index]), "branch_names": list(BRANCHES),
                   "branches": _round(records["branches"][index])}
        probs = records["branch_probs"][index]
        if probs is not None:
            routing["branch_probs"] = _round(probs)
        layer["routing"] = routing
        balls = []
        for name, inside in ball_items[index * per_layer:(index + 1) * per_layer]:
            kind = name.split(":", 1)[1]
            for h in range(inside.shape[0]):
                pruned = (~inside[h]).nonzero().flatten().tolist()
                balls.append({"head": f"{kind} {h}", "inside": inside[h].tolist(), "pruned": pruned,
                              "pruned_tokens": [tokens[j] for j in pruned]})
        layer["balls"] = balls


# --------------------------------------------------------------------------------------- export, generate
def export_json(analysis: dict[str, Any], path: str | Path) -> Path:
    """Write an ``analyze`` result as JSON (UTF-8) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(analysis, ensure_ascii=False), encoding="utf-8")
    return path


@torch.no_grad()
def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 40, greedy: bool = True,
             temperature: float = 0.8, top_k: int = 50, seed: int = 0, max_tokens: int | None = None) -> dict[str, str]:
    """A short continuation for the app: ``{"prompt", "continuation", "text"}``; the prompt is cut to the
    context of models with learned positions, so generation always fits."""
    if max_new_tokens <= 0:
        raise ConfigError("max_new_tokens must be positive")
    if not greedy and temperature <= 0:
        raise ConfigError("temperature must be > 0 (or use greedy decoding)")
    ids = encode(tokenizer, prompt, max_tokens=max_tokens)
    if model.config.pos == "learned":
        limit = model.config.block_size
        ids = ids[:, -max(1, limit - max_new_tokens):]
        max_new_tokens = min(max_new_tokens, limit - ids.shape[1])
    torch.manual_seed(seed)
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=top_k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = model.generate(ids.to(device), max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
    continuation = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return {"prompt": prompt, "continuation": continuation, "text": prompt + continuation}


__all__ = ["analyze", "encode", "export_json", "generate", "token_labels"]
