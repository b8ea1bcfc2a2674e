"""The vision Dual Attention Transformer (ViDAT): patches → dual-attention encoder → pooled → classes.

Patches (LayerNorm → Linear → LayerNorm), a learned CLS token in front, learned positions, non-causal
dual-attention blocks, then the CLS token's final state or the mean of every token's (``pooling``) and a linear
classifier. ``n_heads_ra=0`` is the ViT baseline with the same parameter names. One symbol retriever is shared
by all layers (``symbol_retriever``); position-relative symbols see offsets of both signs along the raster order.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from ...layers.dual_attention import build_symbol_retriever
from ...layers.patches import PatchEmbedding
from .configuration_dat_vision import DATVisionConfig
from .stacks import DATPreTrainedModel, DualAttentionStack


class VisionEmbeddings(nn.Module):
    """Images (batch, channels, H, W) → tokens (batch, 1 + patches, d_model): [CLS ; patches] + positions."""

    def __init__(self, config: DATVisionConfig):
        super().__init__()
        self.image_sides = config.image_sides
        self.patches = PatchEmbedding(config.patch_size, config.num_channels, config.d_model, bias=config.bias,
                                      eps=config.norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.position_embeddings = (
            nn.Embedding(config.block_size, config.d_model) if config.pos == "learned" else None
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and their positions (0 for CLS, then the patches in raster order)."""
        if tuple(pixel_values.shape[-2:]) != self.image_sides:
            raise ValueError(f"this model takes {self.image_sides[0]}×{self.image_sides[1]} images (its learned "
                             f"positions), got {tuple(pixel_values.shape[-2:])}; resize them (DATImageProcessor)")
        patches = self.patches(pixel_values.to(self.cls_token.dtype))
        x = torch.cat([self.cls_token.expand(patches.shape[0], 1, -1), patches], dim=1)
        position_ids = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        return self.dropout(x), position_ids


class DATForImageClassification(DATPreTrainedModel):
    """ViDAT with a classifier: ``pixel_values`` (batch, channels, H, W) and optional ``labels`` (batch,) → logits
    (batch, num_labels) and the loss HF's ``Trainer`` reads (cross-entropy; HF's ``problem_type`` rules)."""

    config_class = DATVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: DATVisionConfig):
        super().__init__(config)
        self.embeddings = VisionEmbeddings(config)
        retriever = None
        if config.n_heads_ra:
            self.symbol_retriever = retriever = build_symbol_retriever(config, bidirectional=True)
        self.encoder = DualAttentionStack(config, retriever, config.n_layers)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VisionEmbeddings):
            init.normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        x, position_ids = self.embeddings(pixel_values)
        ctx = self.encoder.context(position_ids, None, output_attentions=bool(output_attentions))
        encoded = self.encoder.run(x, ctx, output_hidden_states=bool(output_hidden_states))
        pooled = encoded.hidden[:, 0] if self.config.pooling == "cls" else encoded.hidden.mean(dim=1)
        logits = self.classifier(pooled)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states,
                                       attentions=encoded.attentions)
        return output if return_dict is not False else output.to_tuple()
