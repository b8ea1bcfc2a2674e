"""The layer stacks of DAT's encoder-based models, and what those models share.

A ``DualAttentionStack`` is n layers of dual attention and the final norm: an encoder (non-causal, padding
masked) or, given cross-attention heads, a decoder (causal dual attention, cross-attention over the encoder's
output). The sequence-to-sequence and vision models put their embeddings in front and their heads behind. A stack
also says what ``attnlab.analysis`` shows of its layers (``analysis_probes``, ``analysis_layers``): the same
attention, relation and symbol entries as the causal LM's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers.cache_utils import Cache

from ...layers.context import MixerContext
from ...layers.cross_attention import CrossAttention
from ...layers.dual_attention import DualAttention, init_dual_attention_weights
from ...layers.masks import attention_bias_mask, padding_mask
from ...layers.norms import build_norm
from ...layers.rotary import RotaryEmbedding
from ...layers.symbols import RelativeSymbols, SymbolicAttention
from ..analysis_data import attention_entry, relations_entry, to_json
from ..skeleton import AttnLabPreTrainedModel
from .blocks import DecoderBlock, EncoderBlock


class StackOutput(NamedTuple):
    hidden: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None  # every layer's input and the final output, if asked for
    attentions: tuple[torch.Tensor | None, ...] | None  # every layer's (self-)attention weights, if asked for
    cross_attentions: tuple[torch.Tensor | None, ...] | None  # a decoder's cross-attention weights, if asked for


class DualAttentionStack(nn.Module):
    """``n_layers`` dual-attention blocks and the final norm (none after post-norm blocks, or without
    ``final_norm``). ``cross_heads`` makes it a decoder: causal, each block with cross-attention.

    ``config`` is a ``DATConfig`` with ``norm_first`` and ``final_norm`` (or a ``StackView`` of one); the
    symbol retriever is the model's, shared by every layer of every stack.
    """

    def __init__(self, config, symbol_retriever: nn.Module | None, n_layers: int, *, cross_heads: int | None = None):
        super().__init__()
        self.causal = cross_heads is not None
        self.layers = nn.ModuleList(
            self._block(config, symbol_retriever, i, cross_heads) for i in range(n_layers)
        )
        with_norm = config.norm_first and config.final_norm
        self.norm = build_norm(config.norm, config.d_model, config.norm_eps) if with_norm else nn.Identity()
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.pos == "rope" else None

    @staticmethod
    def _block(config, symbol_retriever: nn.Module | None, layer_idx: int, cross_heads: int | None) -> nn.Module:
        mixer = DualAttention(config, layer_idx, symbol_retriever, norm_input=config.norm_first)
        if cross_heads is None:
            return EncoderBlock(config, mixer, norm_first=config.norm_first)
        cross = CrossAttention(config.d_model, cross_heads, config.kv_heads(cross_heads), layer_idx=layer_idx,
                               bias=config.bias, dropout=config.dropout)
        return DecoderBlock(config, mixer, cross, norm_first=config.norm_first)

    def context(
        self,
        position_ids: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        *,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> MixerContext:
        """What this stack's mixers share: a causal mask over [cache; current] (decoder) or the padding (encoder)."""
        past = cache.get_seq_length() if cache is not None else 0
        q_len = position_ids.shape[1]
        if self.causal:
            mask = attention_bias_mask(key_padding_mask, q_len, past, position_ids.device)
        else:
            mask = padding_mask(key_padding_mask)
        return MixerContext(
            position_ids=position_ids,
            rope=self.rotary(position_ids) if self.rotary is not None else None,
            attn_mask=mask,
            key_padding_mask=key_padding_mask,
            cache=cache,
            past_length=past,
            output_attentions=output_attentions,
            causal=self.causal,
        )

    def run(
        self,
        x: torch.Tensor,
        ctx: MixerContext,
        *,
        memory: torch.Tensor | None = None,
        memory_ctx: MixerContext | None = None,
        output_hidden_states: bool = False,
    ) -> StackOutput:
        """The blocks and the final norm over embedded inputs ``x``; a decoder also gets the memory and its context."""
        hidden_states, attentions, cross_attentions = [], [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden_states.append(x)
            if self.causal:
                x, weights, cross_weights = layer(x, ctx, memory, memory_ctx)
                cross_attentions.append(cross_weights)
            else:
                x, weights = layer(x, ctx)
            attentions.append(weights)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states.append(x)
        asked = ctx.output_attentions
        return StackOutput(
            x,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if asked else None,
            tuple(cross_attentions) if asked and self.causal else None,
        )

    # What ``attnlab.analysis`` (and ``attnlab viz``) shows of a stack: one entry per layer, as in the causal LM.
    def analysis_probes(self, name: str, records: dict[str, Any]) -> list[tuple[nn.Module, Callable]]:
        """Forward hooks that record, for each layer with relational heads, the relations r(x_i, x_j) computed from
        the relational heads' own input and the symbols its tokens retrieved, in ``records[f"{name}.{layer}"]``
        (tensors of the batch's first sequence, padding included: ``analysis_layers`` drops it)."""
        pairs: list[tuple[nn.Module, Callable]] = []
        for index, layer in enumerate(self.layers):
            mixer = layer.mixer
            if not isinstance(mixer, DualAttention) or not mixer.n_ra:
                continue
            slot = records.setdefault(f"{name}.{index}", {})

            def on_mixer(module, args, kwargs, output, slot=slot):
                x, ctx = args[0], args[1] if len(args) > 1 else kwargs["ctx"]
                slot["symbols"] = _retrieved_symbols(module._symbol_retriever[0], x[:1], ctx)

            def on_relational(module, args, kwargs, output, slot=slot):
                slot["relations"] = module.relations(args[0][:1])[0]  # (n_relations, seq, seq)

            pairs += [(mixer, on_mixer), (mixer.relational, on_relational)]
        return pairs

    def analysis_layers(
        self, name: str, attentions: tuple[torch.Tensor | None, ...] | None, records: dict[str, Any],
        labels: list[str], keep: torch.Tensor | None = None, title: str = "Softmax attention",
    ) -> list[dict[str, Any]]:
        """Per layer: ``attention`` (its self-attention heads, then its relational heads' α), ``relations`` (a
        causal stack's future pairs null) and ``symbols``, over the positions ``keep`` selects (the batch's first
        sequence without its padding; all by default), one label per kept position."""
        layers = []
        for index, layer in enumerate(self.layers):
            entry: dict[str, Any] = {"layer": index}
            weights = attentions[index] if attentions else None
            if weights is not None:
                w = kept_positions(weights[0], keep, (-2, -1))
                entry["attention"] = attention_entry(w, head_labels(layer.mixer), list(labels), title)
            slot = records.get(f"{name}.{index}", {})
            if "relations" in slot:
                r = kept_positions(slot["relations"], keep, (-2, -1))
                if self.causal:
                    future = torch.ones(r.shape[-2:], dtype=torch.bool, device=r.device).triu(1)
                    r = r.masked_fill(future, float("nan"))
                relational = layer.mixer.relational
                entry["relations"] = relations_entry(r, activation=relational.activation,
                                                     symmetric=relational.symmetric)
            if "symbols" in slot:
                entry["symbols"] = _symbols_entry(slot["symbols"], keep)
            layers.append(entry)
        return layers


def head_labels(mixer: nn.Module) -> list[str]:
    """``SA h`` for a dual-attention layer's self-attention heads, then ``RA h`` for its relational heads: the
    order of the weights it returns."""
    return [f"SA {h}" for h in range(mixer.n_sa)] + [f"RA {h}" for h in range(mixer.n_ra)]


def kept_positions(t: torch.Tensor, keep: torch.Tensor | None, dims: tuple[int, ...]) -> torch.Tensor:
    """``t`` with only the kept positions along ``dims``."""
    if keep is None:
        return t
    for dim in dims:
        t = t.index_select(dim, keep.nonzero().flatten().to(t.device))
    return t


def _retrieved_symbols(retriever: nn.Module, x: torch.Tensor, ctx: MixerContext) -> dict[str, Any]:
    """What each token of one sequence retrieves: weights over the symbol library, its position, or a note that
    symbols are relative (then every pair has its own)."""
    if isinstance(retriever, SymbolicAttention):
        return {"kind": "symbolic_attention", "weights": retriever.retrieval_weights(x)}  # (heads, seq, n_symbols)
    if isinstance(retriever, RelativeSymbols):
        return {"kind": "position_relative", "max_rel_pos": retriever.max_rel_pos, "bidirectional": not ctx.causal}
    return {"kind": "positional", "positions": ctx.position_ids[0]}


def _symbols_entry(symbols: dict[str, Any], keep: torch.Tensor | None) -> dict[str, Any]:
    """A ``_retrieved_symbols`` record as JSON-ready data (the shape the causal LM's analysis gives)."""
    if symbols["kind"] == "symbolic_attention":
        w = kept_positions(symbols["weights"], keep, (-2,))
        return {"kind": "symbolic_attention", "weights": to_json(w), "assigned": w.argmax(-1).tolist(),
                "head_labels": [f"symbol head {h}" for h in range(w.shape[0])]}
    if symbols["kind"] == "positional":
        return {"kind": "positional", "assigned": [kept_positions(symbols["positions"], keep, (0,)).tolist()]}
    return dict(symbols)


class DATPreTrainedModel(AttnLabPreTrainedModel):
    """DAT's encoder-based models: the LM's initialisation (GPT-2's, plus the relational and symbol parameters)."""

    _no_split_modules = ["EncoderBlock", "DecoderBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_dual_attention_weights(module, self.config.initializer_range)
