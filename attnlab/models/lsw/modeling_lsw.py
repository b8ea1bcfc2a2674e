"""LSW Transformer: embedding → W_in → pre-norm blocks (LSW attention, SwiGLU) → norm → W_out → tied head.

The blocks are the skeleton's; only the backbone differs, to decouple the embedding width ``d_emb`` from
``d_model`` and to carry the Transformer-XL memory (``XLMemory``, also the generation cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...layers.lsw_attention import LSWAttention, LSWContext, XLMemory, reversed_positions
from ...layers.norms import build_norm
from ...layers.rotary import RotaryEmbedding
from ...losses import simctg_loss
from ..skeleton import AttnLabForCausalLM, Backbone
from .configuration_lsw import LSWConfig
from .contrastive import contrastive_search


@dataclass
class LSWCausalLMOutput(CausalLMOutputWithPast):
    """``loss`` is the training objective: ``lm_loss`` plus ``simctg_weight`` × ``contrastive_loss`` in training."""

    lm_loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None


class LSWBackbone(Backbone):
    """Returns hidden states of width d_emb (after W_out), ready for the tied LM head.

    The skeleton's forward, with its own embedding (W_in after a d_emb-wide table), context (reversed RoPE,
    registers, memory and document masks) and finish (W_out, then the memory takes this segment).
    """

    # LSWAttention reads and stores its memory through ctx.once and the memory advances in finish, after the
    # blocks: checkpointed blocks recompute over what the forward found, even while the memory is carried.
    recomputes_with_cache = True

    def __init__(self, config: LSWConfig, build_mixer, build_block):
        # Its own modules, in its own order (so seeded initialisation stays as it was), not Backbone's.
        nn.Module.__init__(self)
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_emb)
        self.input_proj = nn.Linear(config.d_emb, config.d_model, bias=False)
        self.embed_positions = nn.Embedding(config.block_size, config.d_model) if config.pos == "learned" else None
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.pos == "rope" else None
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(build_block(config, build_mixer(config, i), i) for i in range(config.n_layers))
        self.norm = build_norm(config.norm, config.d_model, config.norm_eps)
        self.output_proj = nn.Linear(config.d_model, config.d_emb, bias=False)

    def embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        return self.input_proj(super().embed(input_ids, inputs_embeds))

    def context(
        self,
        position_ids: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        cache: XLMemory | None,
        output_attentions: bool,
        document_ids: torch.Tensor | None = None,
    ) -> LSWContext:
        """The reversed-RoPE angles and what decides who sees what; the layers build their masks from it."""
        if cache is not None and not isinstance(cache, XLMemory):
            raise TypeError(f"LSW models keep their memory in an XLMemory (model.make_cache()), got {type(cache)}")
        seq = position_ids.shape[1]
        memory_valid = cache.valid if cache is not None else None
        query_valid = key_padding_mask[:, -seq:] if key_padding_mask is not None else None
        memory_docs = cache.docs if cache is not None and document_ids is not None else None
        rope = key_rope = None
        if self.rotary is not None:
            newest = position_ids.max(dim=-1).values
            rope = key_rope = self.rotary(reversed_positions(position_ids, newest))
            if memory_valid is not None:
                key_rope = self.rotary(reversed_positions(cache.positions, newest))
                key_rope = (torch.cat([key_rope[0], rope[0]], dim=1), torch.cat([key_rope[1], rope[1]], dim=1))
        return LSWContext(
            position_ids=position_ids,
            rope=rope,
            key_rope=key_rope,
            key_padding_mask=key_padding_mask,
            cache=cache,
            past_length=cache.get_seq_length() if cache is not None else 0,
            output_attentions=output_attentions,
            n_registers=self.config.n_registers,
            memory_valid=memory_valid,
            query_valid=query_valid,
            memory_docs=memory_docs,
            query_docs=document_ids,
        )

    def finish(self, x: torch.Tensor, ctx: LSWContext, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """W_out after the final norm; the memory then takes this segment's keys (valid, positions, documents)."""
        if ctx.cache is not None:
            seq = ctx.position_ids.shape[1]
            valid = ctx.key_padding_mask[:, -seq:] if ctx.key_padding_mask is not None else torch.ones_like(
                ctx.position_ids, dtype=torch.bool)
            docs = document_ids if document_ids is not None else torch.zeros_like(ctx.position_ids)
            ctx.cache.advance(valid, ctx.position_ids, docs)
        return self.output_proj(self.norm(x))


class LSWForCausalLM(AttnLabForCausalLM):
    """LSW Transformer (XL memory, reversed RoPE, registers, SimCTG); ``generate(penalty_alpha=, top_k=)``
    runs contrastive search.

    ``forward`` is the skeleton's, plus ``document_ids`` (batch, seq): keys of another document are masked,
    in the segment and in memory. Pass ``cache=model.make_cache()``, ``use_cache=True`` and feed
    consecutive segments to train with XL memory; SimCTG is added to ``loss`` in training mode.
    """

    config_class = LSWConfig
    attention_title = "Attention over [registers; memory; tokens]"
    backbone_class = LSWBackbone
    backbone_inputs = ("document_ids",)
    output_class = LSWCausalLMOutput

    def build_mixer(self, config: LSWConfig, layer_idx: int) -> nn.Module:
        return LSWAttention(
            config.d_model,
            config.n_heads,
            config.n_kv_heads,
            layer_idx=layer_idx,
            n_registers=config.n_registers,
            bias=config.bias,
            dropout=config.dropout,
        )

    def attention_labels(self, weights: torch.Tensor, tokens: list[str]) -> tuple[list[str], list[str]]:
        """Keys are [registers; memory; tokens]."""
        heads, keys = super().attention_labels(weights, tokens)
        registers = self.config.n_registers
        memory = weights.shape[-1] - len(tokens) - registers
        return heads, [f"[reg {r}]" for r in range(registers)] + [f"[mem {m}]" for m in range(memory)] + keys

    def make_cache(self) -> XLMemory:
        """The XL memory: the last ``mem_len`` tokens per layer (everything when mem_len is 0)."""
        return XLMemory(self.config.n_layers, self.config.mem_len or None)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LSWAttention):
            init.normal_(module.register_keys, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.register_values, mean=0.0, std=self.config.initializer_range)

    def generate(self, inputs: torch.Tensor | None = None, *args, penalty_alpha: float | None = None, **kwargs):
        """HF ``generate``; with ``penalty_alpha`` > 0, contrastive search (not in transformers 5 core)."""
        if not penalty_alpha:
            return super().generate(inputs, *args, **kwargs)
        if args:
            raise TypeError("contrastive search takes keyword arguments only")
        input_ids = kwargs.pop("input_ids", inputs)
        return contrastive_search(self, input_ids, penalty_alpha=penalty_alpha, **kwargs)

    def auxiliary_losses(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """SimCTG in training mode (``contrastive_loss``, weighted by ``simctg_weight``), padding-aware."""
        if not (self.training and self.config.simctg_weight > 0):
            return {}
        valid = attention_mask[:, -hidden.shape[1]:].bool() if attention_mask is not None else None
        return {"contrastive_loss": (self.config.simctg_weight, simctg_loss(hidden, self.config.simctg_margin, valid))}
