"""Dual Attention Transformer LM: the skeleton with dual attention (``attnlab/layers/dual_attention.py``).

One symbol retriever is shared by all layers (the authors' default) and lives on the model
(``symbol_retriever.*``); each layer retrieves its symbols from its own input, the residual stream before
the block's norm, as the authors do. With ``n_heads_ra=0`` the model is the GPT baseline, parameter name for
parameter name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...layers.dual_attention import (
    DATCache,
    DualAttention,
    build_symbol_retriever,
    init_dual_attention_weights,
)
from ...layers.relational import RelationalAttention
from ...layers.symbols import RelativeSymbols, SymbolicAttention
from ..analysis_data import to_json
from ..skeleton import AttnLabForCausalLM, Block
from .configuration_dat import DATConfig


class DATForCausalLM(AttnLabForCausalLM):
    config_class = DATConfig

    def build_mixer(self, config: DATConfig, layer_idx: int) -> nn.Module:
        if layer_idx == 0 and config.n_heads_ra:
            self.symbol_retriever = build_symbol_retriever(config)  # one library for all layers
        return DualAttention(config, layer_idx, getattr(self, "symbol_retriever", None))

    def build_block(self, config: DATConfig, mixer: DualAttention, layer_idx: int) -> nn.Module:
        return Block(config, mixer, mixer_norm=not mixer.owns_norm)

    def make_cache(self) -> DATCache:
        return DATCache()

    def attention_labels(self, weights: torch.Tensor, tokens: list[str]) -> tuple[list[str], list[str]]:
        n_sa = self.config.n_heads_sa
        return [f"SA {h}" for h in range(n_sa)] + [f"RA {h}" for h in range(weights.shape[0] - n_sa)], list(tokens)

    def analysis_probes(self, records: dict[str, Any]) -> list[tuple[nn.Module, Callable]]:
        """Per layer with relational heads: the relations r(x_i, x_j) and the symbols its tokens retrieved."""
        entries = records.setdefault("dat", [])
        pending: dict[str, Any] = {}

        def on_symbols(module, args, kwargs, output):
            x, ctx = args[0], args[1] if len(args) > 1 else kwargs.get("ctx")
            if isinstance(module, SymbolicAttention):
                w = module.retrieval_weights(x[:1])  # (symbol heads, T, n_symbols)
                pending["symbols"] = {"kind": "symbolic_attention", "weights": to_json(w),
                                      "assigned": w.argmax(-1).tolist(),
                                      "head_labels": [f"symbol head {h}" for h in range(w.shape[0])]}
            elif isinstance(module, RelativeSymbols):
                pending["symbols"] = {"kind": "position_relative", "max_rel_pos": module.max_rel_pos}
            else:
                pending["symbols"] = {"kind": "positional", "assigned": [ctx.position_ids[0].tolist()]}

        def on_relational(module, args, kwargs, output):
            r = module.relations(args[0][:1])[0]  # (d_r, T, T)
            future = torch.ones(r.shape[-2:], dtype=torch.bool, device=r.device).triu(1)
            entry = {"relations": {"values": to_json(r.masked_fill(future, float("nan"))),
                                   "labels": [f"relation {l}" for l in range(r.shape[0])],
                                   "activation": module.activation, "symmetric": module.symmetric}}
            if "symbols" in pending:
                entry["symbols"] = pending.pop("symbols")
            entries.append(entry)

        if not self.config.n_heads_ra:
            return []
        return [(self.symbol_retriever, on_symbols)] + [
            (m, on_relational) for m in self.modules() if isinstance(m, RelationalAttention)
        ]

    def analysis_layers(self, input_ids, attentions, records, tokens) -> list[dict[str, Any]]:
        layers = super().analysis_layers(input_ids, attentions, records, tokens)
        for layer, entry in zip(layers, records.get("dat", [])):
            layer.update(entry)
        return layers

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init for linears/embeddings/norms; W_r ~ N(0, 0.02), symbol libraries as the authors."""
        super()._init_weights(module)
        init_dual_attention_weights(module, self.config.initializer_range)
