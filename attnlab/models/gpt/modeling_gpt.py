"""GPT baseline model: the skeleton with ``CausalSelfAttention`` (MHA, GQA or MQA via n_kv_heads)."""

from __future__ import annotations

from torch import nn

from ...layers.attention import CausalSelfAttention
from ..skeleton import AttnLabForCausalLM
from .configuration_gpt import GPTConfig


class GPTForCausalLM(AttnLabForCausalLM):
    config_class = GPTConfig

    def build_mixer(self, config: GPTConfig, layer_idx: int) -> nn.Module:
        return CausalSelfAttention(
            config.d_model,
            config.n_heads,
            config.n_kv_heads,
            layer_idx=layer_idx,
            bias=config.bias,
            dropout=config.dropout,
        )
