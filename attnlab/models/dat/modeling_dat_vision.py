"""The vision Dual Attention Transformer (ViDAT): patches → dual-attention encoder → pooled → classes.

Patches (LayerNorm → Linear → LayerNorm), a learned CLS token in front, learned positions, non-causal
dual-attention blocks, then the CLS token's final state or the mean of every token's (``pooling``) and a linear
classifier. ``n_heads_ra=0`` is the ViT baseline with the same parameter names. One symbol retriever is shared
by all layers (``symbol_retriever``); position-relative symbols see offsets of both signs along the raster order.

Analysis (``attnlab.analysis.analyze_image``, ``attnlab viz``): per layer the attention maps, relations and symbols
over the tokens [CLS; patches] (labelled ``cls``, ``p(row,col)``), and what the pooled query (the CLS token, or the
mean over all tokens) attends to and relates to, reshaped to the patch grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from ...layers.dual_attention import build_symbol_retriever
from ...layers.patches import PatchEmbedding
from ..analysis_data import grid_maps, to_json
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
    analysis_kind = "image"  # what attnlab.analysis and attnlab viz give it: an image

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

    def default_image_processor(self):
        """The image processor sized for this model, for when none was saved beside it (``attnlab viz``)."""
        from .image_processing_dat import DATImageProcessor  # PIL only when images are processed

        return DATImageProcessor.for_config(self.config)

    def analysis_tokens(self) -> list[str]:
        """A label per token: ``cls``, then ``p(row,col)`` per patch in raster order."""
        rows, columns = self.config.grid
        return ["cls"] + [f"p({r},{c})" for r in range(rows) for c in range(columns)]

    def analysis_probes(self, records: dict[str, Any]) -> list[tuple[nn.Module, Callable]]:
        """Forward hooks recording the relations and symbols of the relational layers (``records``)."""
        return self.encoder.analysis_probes("encoder", records)

    def analysis_layers(
        self, pixel_values: torch.Tensor, attentions: tuple[torch.Tensor | None, ...] | None, records: dict[str, Any],
        tokens: list[str],
    ) -> list[dict[str, Any]]:
        """Per layer, for the first image: ``attention``, ``relations`` and ``symbols`` over [CLS; patches], and
        ``patch_attention`` / ``patch_relations``: the pooled query's row over the patches on the patch grid.

        The pooled query is what the classifier reads (``config.pooling``): the CLS token's row, or the mean of
        every token's row (CLS included, as the pooling). Patch maps leave out the weight on the CLS key, so a
        map sums to 1 minus that weight."""
        layers = self.encoder.analysis_layers("encoder", attentions, records, tokens,
                                              title="Attention over [CLS; patches]")
        grid, query = self.config.grid, self.config.pooling

        def pooled(maps: torch.Tensor) -> torch.Tensor:  # (..., T, T) → (..., patches)
            return (maps[..., 0, 1:] if query == "cls" else maps.mean(dim=-2)[..., 1:]).float()

        for index, layer in enumerate(layers):
            weights = attentions[index] if attentions else None
            if weights is not None:
                rows = pooled(weights[0])
                layer["patch_attention"] = {
                    "query": query, "grid": list(grid), "head_labels": layer["attention"]["head_labels"],
                    "maps": to_json(grid_maps(rows, grid)), "mean": to_json(grid_maps(rows.mean(0), grid)),
                }
            relations = records.get(f"encoder.{index}", {}).get("relations")
            if relations is not None:
                layer["patch_relations"] = {"query": query, "grid": list(grid), "labels": layer["relations"]["labels"],
                                            "maps": to_json(grid_maps(pooled(relations), grid))}
        return layers

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
