"""LEAP language model: the shared skeleton with LEAP (or causal Fastformer) mixers and recurrent generation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import initialization as init

from ...layers.leap import CausalFastformer, LeapAttention, LeapCache
from ...ops.leap import window_weights
from ..analysis_data import to_json
from ..skeleton import AttnLabForCausalLM
from .configuration_leap import LeapConfig


class LeapForCausalLM(AttnLabForCausalLM):
    """Causal LM whose layer l mixes tokens by additive attention over a window of ``layer_windows[l]``.

    ``output_attentions=True`` returns, per layer, the importance logits (B, heads, T) of the current
    tokens (kv heads for LEAP, the key pooling for Fastformer; padding at -inf): token l's weight in
    position i's summary is their softmax over i's window. ``explain`` turns them into those weights.
    """

    config_class = LeapConfig

    def build_mixer(self, config: LeapConfig, layer_idx: int) -> nn.Module:
        window = config.layer_windows[layer_idx]
        if config.mixer == "fastformer":
            return CausalFastformer(config.d_model, config.n_heads, window=window, layer_idx=layer_idx, bias=config.bias)
        return LeapAttention(
            config.d_model, config.n_heads, config.n_kv_heads, window=window, layer_idx=layer_idx, bias=config.bias
        )

    def make_cache(self) -> LeapCache:
        """Recurrent state per layer: O(1) for global layers, the last k-1 tokens for windows of k."""
        return LeapCache(self.config.n_layers)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CausalFastformer):
            init.normal_(module.query_score, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.key_score, mean=0.0, std=self.config.initializer_range)

    @torch.no_grad()
    def explain(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Per layer, the importance weights α (B, heads, T, T): α[b, h, i, l] is the softmax weight of
        token l in the summary position i reads (zero outside i's window, the future and padding; each
        row of a real token sums to 1). ``α[..., -1, :]`` is what the last token attends to."""
        out = self(input_ids, attention_mask=attention_mask, output_attentions=True, use_cache=False)
        return tuple(window_weights(s, k) for s, k in zip(out.attentions, self.config.layer_windows))

    def analysis_layers(self, input_ids, attentions, records, tokens) -> list[dict[str, Any]]:
        """No softmax maps: per layer the focus logits and the importance weights α they give (``explain``)."""
        layers = []
        for index, (logits, alpha) in enumerate(zip(attentions, self.explain(input_ids))):
            layers.append({
                "layer": index,
                "focus_logits": to_json(logits[0]) if logits is not None else None,
                "importance": {"weights": to_json(alpha[0]), "window": self.config.layer_windows[index],
                               "head_labels": [f"head {h}" for h in range(alpha.shape[1])]},
            })
        return layers
