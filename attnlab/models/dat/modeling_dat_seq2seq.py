"""The sequence-to-sequence Dual Attention Transformer: a dual-attention encoder and decoder, as a native HF model.

Encoder: source embedding (scaled by √d_model) + positions → non-causal dual-attention blocks, the padding of
the source masked. Decoder: target embedding + positions → causal dual attention → cross-attention over the
encoder's final states → FFN. One symbol retriever is shared by every layer of both stacks (``symbol_retriever``),
as in the ``dual-attention`` package; each layer retrieves its symbols from its own input. Layer parameters are
named as in the causal LM (``layers.i.mixer.qkv``, ``layers.i.mixer.relational.*``, ``layers.i.ffn.*``...).

Generation: ``generate()`` runs the encoder once; the cache (``make_cache``) is an ``EncoderDecoderCache`` of a
``DATCache`` (self-attention and relational heads, as in the LM) and a cache of each layer's memory keys and
values, computed at the first step.

Analysis (``attnlab.analysis.analyze_seq2seq``, ``attnlab viz``): ``analysis_probes`` and ``analysis_stacks`` give
per encoder layer its attention maps, relations and symbols over the source, per decoder layer the same over the
target prefix (causal) and its cross-attention maps (target × source).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from ...layers.context import MixerContext
from ...layers.dual_attention import DATCache, build_symbol_retriever
from ...layers.masks import padding_mask
from ...layers.sinusoidal import SinusoidalPositions
from ..analysis_data import attention_entry
from ..hf_compat import SEQ2SEQ_CACHE_FIELD, GeneratesWithOwnCache, one_cache
from ..skeleton import _key_padding_mask, _position_ids, causal_lm_loss
from .configuration_dat_seq2seq import DATSeq2SeqConfig
from .stacks import DATPreTrainedModel, DualAttentionStack, StackOutput, kept_positions


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the start token, then the labels but the last; -100 becomes padding."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


class TokenStack(DualAttentionStack):
    """A dual-attention stack behind a token embedding and positions (sinusoidal, learned, RoPE or none)."""

    def __init__(self, config, symbol_retriever, n_layers: int, *, vocab_size: int, max_length: int,
                 cross_heads: int | None = None):
        super().__init__(config, symbol_retriever, n_layers, cross_heads=cross_heads)
        self.embed_tokens = nn.Embedding(vocab_size, config.d_model)
        self.embed_positions = nn.Embedding(max_length, config.d_model) if config.pos == "learned" else None
        self.sinusoidal = SinusoidalPositions(config.d_model) if config.pos == "sinusoidal" else None
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        self.dropout = nn.Dropout(config.dropout)
        self.max_length = max_length

    def embed(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, position_ids: torch.Tensor
    ) -> torch.Tensor:
        x = (self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds) * self.embed_scale
        if self.embed_positions is not None:
            if int(position_ids.max()) >= self.max_length:
                raise ValueError(f"position {int(position_ids.max())} is past the {self.max_length} learned positions "
                                 "of this model; shorten the input or use pos='sinusoidal'")
            x = x + self.embed_positions(position_ids)
        if self.sinusoidal is not None:
            x = x + self.sinusoidal(position_ids, x.dtype)
        return self.dropout(x)


class Seq2SeqEncoder(TokenStack):
    """Source tokens → the encoder's final states (``BaseModelOutput``); what ``generate()`` runs once."""

    main_input_name = "input_ids"  # what generate() feeds the encoder

    def __init__(self, config: DATSeq2SeqConfig, symbol_retriever):
        super().__init__(config.stack("encoder"), symbol_retriever, config.n_layers,
                         vocab_size=config.source_vocab_size, max_length=config.source_block_size)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """Padded sources give each sequence what it gets alone: padding is masked and positions count real tokens."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds to the encoder")
        batch, seq = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        key_padding_mask = _key_padding_mask(attention_mask, seq)
        if position_ids is None:
            position_ids = _position_ids(key_padding_mask, batch, seq, 0, device)
        ctx = self.context(position_ids, key_padding_mask, output_attentions=bool(output_attentions))
        out = self.run(self.embed(input_ids, inputs_embeds, position_ids), ctx,
                       output_hidden_states=bool(output_hidden_states))
        return BaseModelOutput(last_hidden_state=out.hidden, hidden_states=out.hidden_states,
                               attentions=out.attentions)


class Seq2SeqDecoder(TokenStack):
    """Target tokens (and the encoder's states) → the decoder's final states."""

    def __init__(self, config: DATSeq2SeqConfig, symbol_retriever):
        super().__init__(config.stack("decoder"), symbol_retriever, config.decoder_layers,
                         vocab_size=config.vocab_size, max_length=config.block_size, cross_heads=config.cross_heads)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        memory: torch.Tensor,
        *,
        memory_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> StackOutput:
        """``memory_mask`` is the source's 2-D padding mask; ``attention_mask`` the target's (batch, past + seq)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of decoder_input_ids or decoder_inputs_embeds")
        batch, seq = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        self_cache = cache.self_attention_cache if cache is not None else None
        past = self_cache.get_seq_length() if self_cache is not None else 0
        key_padding_mask = _key_padding_mask(attention_mask, past + seq)
        if position_ids is None:
            position_ids = _position_ids(key_padding_mask, batch, seq, past, memory.device)
        position_ids = position_ids.expand(batch, seq)
        ctx = self.context(position_ids, key_padding_mask, cache=self_cache, output_attentions=output_attentions)
        memory_padding = _key_padding_mask(memory_mask, memory.shape[1])
        memory_ctx = MixerContext(position_ids=position_ids, attn_mask=padding_mask(memory_padding),
                                  key_padding_mask=memory_padding, cache=cache, output_attentions=output_attentions,
                                  causal=False)
        x = self.embed(input_ids, inputs_embeds, position_ids)
        return self.run(x, ctx, memory=memory, memory_ctx=memory_ctx, output_hidden_states=output_hidden_states)


class DATForSeq2SeqLM(GeneratesWithOwnCache, DATPreTrainedModel, GenerationMixin):
    """Encoder-decoder DAT with an LM head on the decoder (tied to the target embedding by default; untied and with
    a bias, ``tie_word_embeddings=False`` and ``lm_head_bias=True``, it is the authors' seq2seq models' head).

    ``labels`` (batch, target_len), -100 where ignored, give the loss; without ``decoder_input_ids`` they are
    shifted right behind ``decoder_start_token_id`` (HF's convention), so a batch of (input_ids, attention_mask,
    labels) trains it, e.g. with ``Seq2SeqTrainer``.
    """

    config_class = DATSeq2SeqConfig
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}
    analysis_kind = "seq2seq"  # what attnlab.analysis and attnlab viz give it: a source and a target prefix

    def __init__(self, config: DATSeq2SeqConfig):
        super().__init__(config)
        retriever = None
        if config.n_heads_ra or config.decoder_heads_ra:
            self.symbol_retriever = retriever = build_symbol_retriever(
                config, max_length=config.symbol_positions, bidirectional=bool(config.n_heads_ra)
            )
        self.encoder = Seq2SeqEncoder(config, retriever)
        self.decoder = Seq2SeqDecoder(config, retriever)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> Seq2SeqEncoder:
        return self.encoder

    def get_decoder(self) -> Seq2SeqDecoder:
        return self.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def make_cache(self) -> EncoderDecoderCache:
        """The decoder's generation cache: its self-attention and relational heads, and the memory keys/values."""
        return EncoderDecoderCache(DATCache(), DynamicCache())

    def analysis_probes(self, records: dict[str, Any]) -> list[tuple[nn.Module, Callable]]:
        """Forward hooks recording the relations and symbols of both stacks' relational layers (``records``)."""
        return self.encoder.analysis_probes("encoder", records) + self.decoder.analysis_probes("decoder", records)

    def analysis_stacks(
        self, output: Seq2SeqLMOutput, records: dict[str, Any], source_tokens: list[str], target_tokens: list[str],
        source_keep: torch.Tensor | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """``encoder_layers`` and ``decoder_layers`` of one forward with ``output_attentions`` (its first sequence):
        per layer ``attention``/``relations``/``symbols`` as in the causal LM, and per decoder layer
        ``cross_attention`` (cross heads, target, source). ``source_keep`` selects the real source tokens (the
        padding is dropped from every map: padded keys get no weight, padded queries are nobody's)."""
        encoder = self.encoder.analysis_layers("encoder", output.encoder_attentions, records, source_tokens,
                                               source_keep, "Encoder self-attention")
        decoder = self.decoder.analysis_layers("decoder", output.decoder_attentions, records, target_tokens,
                                               None, "Decoder self-attention (causal)")
        for layer, weights in zip(decoder, output.cross_attentions or ()):
            if weights is not None:
                w = kept_positions(weights[0], source_keep, (-1,))
                layer["cross_attention"] = attention_entry(w, [f"cross {h}" for h in range(w.shape[0])],
                                                           list(source_tokens), "Cross-attention over the source")
        return {"encoder_layers": encoder, "decoder_layers": decoder}

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """What HF's ``DataCollatorForSeq2Seq`` calls: the labels shifted right behind the start token."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None or pad is None:
            raise ValueError("shifting labels into decoder inputs needs decoder_start_token_id and pad_token_id "
                             "in the config")
        return shift_tokens_right(labels, pad, start)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """Logits of every target position; loss when ``labels`` are given. The encoder runs unless
        ``encoder_outputs`` are passed (``generate()`` passes them); ``attention_mask`` is the source's padding."""
        cache = one_cache(cache, past_key_values)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask, inputs_embeds,
                                           output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = self.make_cache()
        elif use_cache and not isinstance(cache, EncoderDecoderCache):
            cache = EncoderDecoderCache(cache, DynamicCache())
        decoded = self.decoder(
            decoder_input_ids, encoder_outputs.last_hidden_state, memory_mask=attention_mask,
            attention_mask=decoder_attention_mask, position_ids=decoder_position_ids,
            inputs_embeds=decoder_inputs_embeds, cache=cache if use_cache else None,
            output_attentions=bool(output_attentions), output_hidden_states=bool(output_hidden_states),
        )
        logits = self.lm_head(decoded.hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, None, labels, kwargs.get("num_items_in_batch"))
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **{SEQ2SEQ_CACHE_FIELD: cache if use_cache else None},
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()
