"""The one Transformer skeleton every attnlab family plugs into.

token embedding (+ learned positions) → N × Block(norm → mixer → residual, norm → FFN → residual)
→ final norm → LM head (optionally tied to the embedding).

A family is a ``AttnLabForCausalLM`` subclass that names its config class and overrides ``build_mixer``
(and ``make_cache`` if its mixer keeps something other than keys and values while generating,
``build_block`` if its residual block differs). ``docs/extending.md`` walks through the hooks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..layers.context import MixerContext
from ..layers.ffn import build_ffn
from ..layers.masks import attention_bias_mask
from ..layers.norms import build_norm
from ..layers.rotary import RotaryEmbedding, rope_inverse_frequencies
from ..losses import chunked_cross_entropy
from ..ops.cpu_layers import use_fast_cpu_layers
from .analysis_data import attention_entry
from .config import AttnLabConfig
from .hf_compat import CACHE_FIELD, GeneratesWithOwnCache, one_cache


class Block(nn.Module):
    """Pre-norm residual block around a pluggable token mixer and a feed-forward network."""

    def __init__(self, config: AttnLabConfig, mixer: nn.Module, *, mixer_norm: bool = True):
        """``mixer_norm=False``: the mixer normalises its input itself (it needs the un-normalised one too)."""
        super().__init__()
        self.mixer_norm = build_norm(config.norm, config.d_model, config.norm_eps) if mixer_norm else nn.Identity()
        self.mixer = mixer
        self.mixer_dropout = nn.Dropout(config.dropout)
        self.ffn_norm = build_norm(config.norm, config.d_model, config.norm_eps)
        self.ffn = build_ffn(config.ffn, config.d_model, config.d_ff, config.bias, config.dropout)
        self.ffn.down.is_residual_projection = True

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        mixed, weights = self.mixer(self.mixer_norm(x), ctx)
        x = x + self.mixer_dropout(mixed)
        x = x + self.ffn(self.ffn_norm(x))
        return x, weights


class Backbone(nn.Module):
    """Embeddings, blocks and the final norm; returns hidden states, not logits."""

    # Whether blocks marked for activation checkpointing are recomputed in a forward that has a cache: only
    # when every mixer reads and writes it through ``MixerContext.once`` (LSW's XL memory); otherwise such a
    # forward keeps its activations, since a recomputation would read the cache as this forward left it and
    # write it twice.
    recomputes_with_cache = False

    def __init__(self, config: AttnLabConfig, build_mixer, build_block):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = nn.Embedding(config.block_size, config.d_model) if config.pos == "learned" else None
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.pos == "rope" else None
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            build_block(config, build_mixer(config, i), i) for i in range(config.n_layers)
        )
        self.norm = build_norm(config.norm, config.d_model, config.norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **inputs,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """Hidden states (and optionally every layer's input and attention weights).

        A family changes one step, not the loop, through ``embed`` (token ids to the blocks' width),
        ``context`` (what the mixers share, from ``inputs`` such as LSW's document ids) and ``finish``
        (after the blocks: the final norm, and whatever the cache must learn of this forward).
        """
        x = self.embed(input_ids, inputs_embeds)
        batch, seq = x.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        key_padding_mask = _key_padding_mask(attention_mask, past + seq)
        if position_ids is None:
            position_ids = _position_ids(key_padding_mask, batch, seq, past, x.device)
        position_ids = position_ids.expand(batch, seq)
        if self.embed_positions is not None:
            if past + seq > self.config.block_size:
                raise ValueError(
                    f"sequence of {past + seq} tokens exceeds block_size={self.config.block_size} of this model "
                    "(learned positions cannot extrapolate); shorten the input or use pos='rope'"
                )
            x = x + self.embed_positions(position_ids)
        x = self.dropout(x)
        ctx = self.context(position_ids, key_padding_mask, cache, output_attentions, **inputs)
        hidden_states, attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden_states.append(x)
            x, weights = self.run_block(layer, x, ctx)
            if output_attentions:
                attentions.append(weights)
        x = self.finish(x, ctx, **inputs)
        if output_hidden_states:
            hidden_states.append(x)
        return x, (tuple(hidden_states) if output_hidden_states else None), (
            tuple(attentions) if output_attentions else None
        )

    def run_block(
        self, layer: nn.Module, x: torch.Tensor, ctx: MixerContext
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One block; under activation checkpointing its activations are recomputed in the backward."""
        if self.recomputes(layer, ctx):
            return layer._gradient_checkpointing_func(layer, x, ctx)
        return layer(x, ctx)

    def recomputes(self, layer: nn.Module, ctx: MixerContext) -> bool:
        """Whether ``layer`` is checkpointed in this forward: it is marked (``AttnLabForCausalLM.
        _set_gradient_checkpointing``), a backward will follow, and no cache forbids it
        (``recomputes_with_cache``)."""
        marked = getattr(layer, "gradient_checkpointing", False)
        cache_allows = ctx.cache is None or self.recomputes_with_cache
        return marked and self.training and torch.is_grad_enabled() and cache_allows

    def embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings at the blocks' width."""
        return self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds

    def context(
        self,
        position_ids: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        cache: Cache | None,
        output_attentions: bool,
    ) -> MixerContext:
        """What every mixer of this forward shares: positions, RoPE angles, the mask, the cache."""
        past = cache.get_seq_length() if cache is not None else 0
        return MixerContext(
            position_ids=position_ids,
            rope=self.rotary(position_ids) if self.rotary is not None else None,
            attn_mask=attention_bias_mask(key_padding_mask, position_ids.shape[1], past, position_ids.device),
            key_padding_mask=key_padding_mask,
            cache=cache,
            past_length=past,
            output_attentions=output_attentions,
        )

    def finish(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        """After the blocks: the final norm."""
        return self.norm(x)


NON_REENTRANT = partial(checkpoint, use_reentrant=False)  # what HF's activation_checkpointing_enable passes


def _reentrant(func: Callable) -> bool:
    """Whether a checkpoint function (HF passes ``partial(checkpoint, **kwargs)``) is the reentrant variant:
    torch's ``checkpoint`` is when ``use_reentrant`` is not given."""
    keywords = func.keywords if isinstance(func, partial) else {}
    if "use_reentrant" in keywords:
        return bool(keywords["use_reentrant"])
    return (func.func if isinstance(func, partial) else func) is checkpoint


def _key_padding_mask(attention_mask: torch.Tensor | None, total: int) -> torch.Tensor | None:
    """The 2-D mask as booleans, or None when it masks nothing (so the fast causal path stays available)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[1] != total:
        raise ValueError(
            f"attention_mask must have shape (batch, past + current tokens) = (*, {total}), "
            f"got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.bool()
    return None if bool(mask.all()) else mask


def _position_ids(
    key_padding_mask: torch.Tensor | None, batch: int, seq: int, past: int, device: torch.device
) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded row gets the same positions as the unpadded one."""
    if key_padding_mask is None:
        return torch.arange(past, past + seq, device=device).expand(batch, seq)
    return (key_padding_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy, ignoring -100; at least fp32 (fp64 stays fp64 for reference tests).

    ``num_items_in_batch`` (passed by HF ``Trainer`` under gradient accumulation) turns the mean into a sum
    divided by the number of target tokens in the whole accumulated batch. ``chunk_rows`` computes it
    ``chunk_rows`` positions at a time (``attnlab.losses.chunked_cross_entropy``: no fp32 copy of the whole
    logits), the opt-in for large vocabularies.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    flat_logits, flat_targets = logits.flatten(0, -2), shift_labels.flatten().to(logits.device)
    if chunk_rows:
        return chunked_cross_entropy(flat_logits, flat_targets, chunk_rows=chunk_rows, divisor=num_items_in_batch)
    if logits.dtype not in (torch.float32, torch.float64):
        flat_logits = flat_logits.float()
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=-100, reduction=reduction)
    if num_items_in_batch is not None:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
    return loss


class AttnLabPreTrainedModel(PreTrainedModel):
    config_class = AttnLabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02), zero biases, residual output projections scaled by 1/√(2·n_layers)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.n_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RotaryEmbedding):
            # A non-persistent buffer: from_pretrained materialises it uninitialised unless it is set here.
            init.copy_(module.inv_freq, rope_inverse_frequencies(2 * module.inv_freq.numel(), module.theta))


class AttnLabForCausalLM(GeneratesWithOwnCache, AttnLabPreTrainedModel, GenerationMixin):
    """A causal LM on the shared skeleton. Subclasses set ``config_class`` and implement ``build_mixer``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    supports_gradient_checkpointing = True  # Backbone.run_block: HF's activation_checkpointing_enable works
    backbone_class: type[nn.Module] = Backbone  # a family may swap in its own (e.g. LSW's d_emb projections)
    backbone_inputs: tuple[str, ...] = ()  # forward() keywords handed on to the backbone (LSW: document_ids)
    output_class: type[CausalLMOutputWithPast] = CausalLMOutputWithPast
    attention_title = "Softmax attention"  # what the viz app calls the maps of output_attentions
    # Positions per chunk of the LM loss (``causal_lm_loss``), or None for one ``F.cross_entropy``: set it on a
    # model (``model.loss_chunk_rows = 4096``) to keep large-vocabulary logits from being copied to fp32 whole.
    loss_chunk_rows: int | None = None

    def __init__(self, config: AttnLabConfig):
        super().__init__(config)
        self.model = self.backbone_class(config, self.build_mixer, self.build_block)
        # The head maps back from the embedding width: it is (optionally) the embedding matrix itself.
        self.lm_head = nn.Linear(self.model.embed_tokens.embedding_dim, config.vocab_size, bias=False)
        use_fast_cpu_layers(self)  # oneDNN dense layers, cheaper dropout masks (attnlab.ops.cpu_layers)
        self.post_init()

    def build_mixer(self, config: AttnLabConfig, layer_idx: int) -> nn.Module:
        """Return the token mixer of layer ``layer_idx``: a module ``(x, MixerContext) -> (y, weights|None)``."""
        raise NotImplementedError

    def build_block(self, config: AttnLabConfig, mixer: nn.Module, layer_idx: int) -> nn.Module:
        """The residual block around layer ``layer_idx``'s mixer: ``Block`` (pre-norm, mixer, FFN) by default."""
        return Block(config, mixer)

    def _set_gradient_checkpointing(
        self,
        enable: bool = True,
        gradient_checkpointing_func: Callable = NON_REENTRANT,
        every_n_layers: int = 1,
    ) -> None:
        """Mark every ``every_n_layers``-th block (from the first) for activation checkpointing, or none.

        What HF's ``activation_checkpointing_enable`` / ``gradient_checkpointing_enable`` and the Trainer's
        ``gradient_checkpointing`` call. The blocks are not transformers' ``GradientCheckpointingLayer``: the
        backbone's loop (``Backbone.run_block``) checkpoints them, because it knows when a cache forbids it.
        """
        if enable and _reentrant(gradient_checkpointing_func):
            raise ValueError("attnlab models need use_reentrant=False: the reentrant variant runs the "
                             "forward without a graph, so what a block publishes beside its output (MoA's "
                             "TI penalty) would get no gradient")
        for index, block in enumerate(self.model.layers):
            block.gradient_checkpointing = enable and index % every_n_layers == 0
            block._gradient_checkpointing_func = gradient_checkpointing_func

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """HF save, plus a README.md model card when the directory has none (runs write a richer one)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        readme = Path(save_directory) / "README.md"
        if not readme.exists():
            from ..modelcard import render_model_card

            readme.write_text(render_model_card(self))

    def auxiliary_losses(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """Losses trained beside next-token prediction, as ``name: (weight, value)``; none by default.

        Called after the backbone (on all final hidden states) whenever labels are given; ``loss`` is the LM
        loss plus the weighted values, and ``output_class`` fields named like them (and ``lm_loss``) get them.
        """
        return {}

    def make_cache(self) -> Cache:
        """A fresh generation cache; key/value mixers use transformers' ``DynamicCache``."""
        return DynamicCache(config=self.config)

    # What ``attnlab.analysis`` (and the viz app) shows: softmax maps by default; a family adds its mechanism.
    def analysis_probes(self, records: dict[str, Any]) -> list[tuple[nn.Module, Callable]]:
        """Forward hooks ``(module, args, kwargs, output)`` that record, during the analysis's one forward
        pass, what the layers compute beside their attention weights (into ``records``); none by default."""
        return []

    def analysis_layers(
        self, input_ids: torch.Tensor, attentions: list[torch.Tensor | None], records: dict[str, Any], tokens: list[str]
    ) -> list[dict[str, Any]]:
        """Per layer, the JSON-ready entries the analysis shows, from that forward's ``output_attentions``
        (one entry per layer, None where a layer returns none) and what the probes recorded."""
        layers = []
        for index, weights in enumerate(attentions):
            layer: dict[str, Any] = {"layer": index}
            if weights is not None:
                heads, keys = self.attention_labels(weights[0], tokens)
                layer["attention"] = attention_entry(weights[0], heads, keys, self.attention_title)
            layers.append(layer)
        return layers

    def attention_labels(self, weights: torch.Tensor, tokens: list[str]) -> tuple[list[str], list[str]]:
        """A label per head and per key of one layer's (heads, queries, keys) maps."""
        return [f"head {h}" for h in range(weights.shape[0])], list(tokens)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for every position (or the last ``logits_to_keep``); loss when ``labels`` are given.

        ``labels`` are the input ids themselves (shifted inside, -100 ignored), as in every HF causal LM;
        ``shift_labels`` are targets already aligned with the positions (the trainer's next-token windows).
        ``cache`` is the generation cache (or LSW's memory); ``past_key_values`` is its name before transformers
        5.24, accepted too.
        """
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = self.make_cache()
        hidden, all_hidden, attentions = self.model(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if use_cache else None,
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states),
            **{name: kwargs[name] for name in self.backbone_inputs if name in kwargs},
        )
        has_labels = labels is not None or shift_labels is not None
        auxiliary = self.auxiliary_losses(hidden, attention_mask) if has_labels else {}
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = lm_loss = None
        if has_labels:
            loss = lm_loss = causal_lm_loss(logits, labels, shift_labels, kwargs.get("num_items_in_batch"),
                                            self.loss_chunk_rows)
            for weight, value in auxiliary.values():
                loss = loss + weight * value
        reported = {"lm_loss": lm_loss, **{name: value for name, (_, value) in auxiliary.items()}}
        fields = {f.name for f in dataclasses.fields(self.output_class)}
        return self.output_class(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: cache if use_cache else None},
            hidden_states=all_hidden,
            attentions=attentions,
            **{name: value for name, value in reported.items() if name in fields},
        )
