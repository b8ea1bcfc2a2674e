"""MoA metric LM: per block, a token-routed mixture of four heads (causal conv, metric MHA, metric MQA,
channel-mix MLP), then a routed HyperFFN; both residual branches with LayerScale and DropPath.

    x = x + DropPath(LayerScale(Σ_e w_e(x) · g_e(x) · FiLM_e(head_e(norm(x)))))
    x = x + DropPath(LayerScale(HyperFFN(norm(x))))
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from ...layers.context import MixerContext
from ...layers.ffn import build_ffn
from ...layers.hyperffn import BRANCHES, HyperFFN, LowRankFFN
from ...layers.metric_attention import MetricAttention
from ...layers.moa_heads import ChannelMixHead, LocalConvHead, MixtureOfHeads, TokenRouter
from ...layers.norms import build_norm
from ..skeleton import AttnLabForCausalLM, Backbone
from .cache_moa import MoACache
from .configuration_moa import MoAMetricConfig

HEAD_TYPES = ("conv", "mha", "mqa", "channel")


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT), initialised to ``init_value``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for whole sequences, scaling the rest by 1/(1−p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MoABlock(nn.Module):
    """Pre-norm block: routed mixture of heads, then the HyperFFN, each with LayerScale and DropPath."""

    def __init__(self, config: MoAMetricConfig, mixer: nn.Module, layer_idx: int):
        super().__init__()
        d = config.d_model
        self.mixer_norm = build_norm(config.norm, d, config.norm_eps)
        self.mixer = mixer
        self.mixer_dropout = nn.Dropout(config.dropout)
        self.mixer_scale = LayerScale(d, config.layer_scale_init)
        self.ffn_norm = build_norm(config.norm, d, config.norm_eps)
        mlp = build_ffn(config.ffn, d, config.d_ff, config.bias, config.dropout)
        mlp.down.is_residual_projection = True
        self.ffn = HyperFFN(
            mlp,
            LocalConvHead(d, config.conv_kernel, cache_key=f"{layer_idx}.ffn_conv", bias=config.bias),
            LowRankFFN(d, config.ffn_rank, bias=config.bias),
            d,
            top_k=config.ffn_top_k,
            routed=config.branch_router,
        )
        self.ffn_scale = LayerScale(d, config.layer_scale_init)
        self.drop_path = DropPath(config.drop_path)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        mixed, weights = self.mixer(self.mixer_norm(x), ctx)
        x = x + self.drop_path(self.mixer_scale(self.mixer_dropout(mixed)))
        x = x + self.drop_path(self.ffn_scale(self.ffn(self.ffn_norm(x), ctx)))
        return x, weights


class MoABackbone(Backbone):
    """The skeleton's backbone (embeddings, positions, final norm, forward) with ``MoABlock`` layers."""

    def build_block(self, config: MoAMetricConfig, mixer: nn.Module, layer_idx: int) -> nn.Module:
        return MoABlock(config, mixer, layer_idx)


class MoAMetricForCausalLM(AttnLabForCausalLM):
    """The MoA metric LM on the shared skeleton, with a generation cache for every head and branch."""

    config_class = MoAMetricConfig
    backbone_class = MoABackbone
    _no_split_modules = ["MoABlock"]

    def build_mixer(self, config: MoAMetricConfig, layer_idx: int) -> nn.Module:
        metric = dict(
            metric=config.metric,
            alpha_init=config.alpha_init,
            learn_alpha=config.learn_alpha,
            maha_init=config.maha_init,
            use_balls=config.use_balls,
            radius_init=config.radius_init,
            learn_radius=config.learn_radius,
            origin_init_scale=config.origin_init_scale,
            ball_softness=config.ball_softness,
            ti_samples=config.ti_reg_samples if config.ti_reg_weight > 0 else 0,
            rope_theta=config.rope_theta if config.pos == "rope" else None,
            attn_drop=config.attn_drop,
            proj_drop=config.proj_drop,
            bias=config.bias,
        )
        d = config.d_model
        heads = dict(zip(HEAD_TYPES, (
            LocalConvHead(
                d, config.conv_kernel, cache_key=f"{layer_idx}.conv_head", bias=config.bias, proj_drop=config.proj_drop
            ),
            MetricAttention(d, config.n_heads, config.n_kv_heads, cache_index=2 * layer_idx, **metric),
            MetricAttention(d, config.mqa_q_heads, 1, cache_index=2 * layer_idx + 1, **metric),
            ChannelMixHead(d, config.mixer_hidden, bias=config.bias, proj_drop=config.proj_drop),
        )))
        router = TokenRouter(
            d, len(heads), config.router_hidden, dropout=config.router_dropout, temperature=config.router_temperature
        )
        return MixtureOfHeads(heads, router)

    def make_cache(self) -> MoACache:
        return MoACache()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The skeleton's GPT-2 init, plus: zero router outputs, metric/ball parameters, LayerScale, convs."""
        super()._init_weights(module)
        if getattr(module, "zero_init", False):
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MetricAttention):
            module.reset_metric_parameters()
        elif isinstance(module, LayerScale):
            init.constant_(module.gamma, module.init_value)
        elif isinstance(module, nn.Conv1d):
            bound = module.kernel_size[0] ** -0.5
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)

    def auxiliary_losses(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """The triangle-inequality penalty of this training forward, when ``ti_reg_weight`` > 0."""
        penalty = self.ti_penalty() if self.training else None
        return {} if penalty is None else {"ti_loss": (self.config.ti_reg_weight, penalty)}

    def ti_penalty(self) -> torch.Tensor | None:
        """Mean triangle-inequality hinge over the metric heads of the last training forward (None if off)."""
        penalties = [m.ti_penalty for m in self.modules() if isinstance(m, MetricAttention) and m.ti_penalty is not None]
        return torch.stack(penalties).mean() if penalties else None

    @torch.no_grad()
    def routing(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The routers' decisions in one forward pass, per layer.

        "heads": (n_layers, B, T, 4) mixture weights over ``HEAD_TYPES`` (conv, mha, mqa, channel), summing to 1;
        "gates": (n_layers, B, T, 4) the router-bias gates; "branches": (n_layers, B, T, 3) HyperFFN weights over
        ``BRANCHES`` (mlp, conv, lowrank), zero outside each token's top-k.
        """
        records: dict[str, list[torch.Tensor]] = {"heads": [], "gates": [], "branches": []}

        def on_router(module, args, routing):
            records["heads"].append(routing.weights)
            records["gates"].append(routing.gates)

        def on_ffn(module, args, output):
            records["branches"].append(module.branch_weights(args[0]))

        hooks = [layer.mixer.router.register_forward_hook(on_router) for layer in self.model.layers]
        hooks += [layer.ffn.register_forward_hook(on_ffn) for layer in self.model.layers]
        try:
            self(input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        return {name: torch.stack(values) for name, values in records.items()}


__all__ = ["BRANCHES", "HEAD_TYPES", "MoAMetricForCausalLM"]
