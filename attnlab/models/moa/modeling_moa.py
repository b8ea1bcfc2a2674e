"""MoA metric LM: per block, a token-routed mixture of four heads (causal conv, metric MHA, metric MQA,
channel-mix MLP), then a routed HyperFFN; both residual branches with LayerScale and DropPath.

    x = x + DropPath(LayerScale(Σ_e w_e(x) · g_e(x) · FiLM_e(head_e(norm(x)))))
    x = x + DropPath(LayerScale(HyperFFN(norm(x))))
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import initialization as init

from ...layers.hyperffn import BRANCHES
from ...layers.metric_attention import MetricAttention
from ...layers.moa_block import LayerScale, MoABlock
from ...layers.moa_heads import HEAD_TYPES, ChannelMixHead, LocalConvHead, MixtureOfHeads, MoACache, TokenRouter
from ..analysis_data import to_json
from ..skeleton import AttnLabForCausalLM
from .configuration_moa import MoAMetricConfig

class MoAMetricForCausalLM(AttnLabForCausalLM):
    """The MoA metric LM on the shared skeleton, with a generation cache for every head and branch."""

    config_class = MoAMetricConfig
    attention_title = "Metric MHA attention probabilities"
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

    def build_block(self, config: MoAMetricConfig, mixer: nn.Module, layer_idx: int) -> nn.Module:
        return MoABlock(config, mixer, layer_idx)

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

    def attention_labels(self, weights: torch.Tensor, tokens: list[str]) -> tuple[list[str], list[str]]:
        return [f"metric MHA {h}" for h in range(weights.shape[0])], list(tokens)

    def analysis_probes(self, records: dict[str, Any]) -> list[tuple[nn.Module, Callable]]:
        """Per layer: router weights and gates over the heads, HyperFFN branch weights, ball membership."""
        per_layer = records.setdefault("moa", [{"balls": []} for _ in self.model.layers])
        probes = []
        for index, layer in enumerate(self.model.layers):
            entry = per_layer[index]

            def on_router(module, args, kwargs, routing, entry=entry):
                entry["heads"], entry["gates"] = routing.weights[0].float(), routing.gates[0].float()

            def on_ffn(module, args, kwargs, output, entry=entry):
                x = args[0]
                entry["branches"] = module.branch_weights(x)[0].float()
                entry["branch_probs"] = module.router(x)[0].float().softmax(-1) if module.router is not None else None

            def on_metric(module, args, kwargs, output, entry=entry, kind=None):
                if module.use_balls:
                    ctx = args[1] if len(args) > 1 else kwargs["ctx"]
                    entry["balls"].append((kind, module.ball_membership(args[0][:1], ctx)[0]))

            probes += [(layer.mixer.router, on_router), (layer.ffn, on_ffn)]
            probes += [(head, partial(on_metric, kind=kind)) for kind, head in layer.mixer.heads.items()
                       if isinstance(head, MetricAttention)]
        return probes

    def analysis_layers(self, input_ids, attentions, records, tokens) -> list[dict[str, Any]]:
        layers = super().analysis_layers(input_ids, attentions, records, tokens)
        for layer, entry in zip(layers, records["moa"]):
            routing = {"head_types": list(HEAD_TYPES), "heads": to_json(entry["heads"]),
                       "gates": to_json(entry["gates"]), "branch_names": list(BRANCHES),
                       "branches": to_json(entry["branches"])}
            if entry["branch_probs"] is not None:
                routing["branch_probs"] = to_json(entry["branch_probs"])
            layer["routing"] = routing
            layer["balls"] = [
                {"head": f"{kind} {h}", "inside": inside[h].tolist(), "pruned": pruned,
                 "pruned_tokens": [tokens[j] for j in pruned]}
                for kind, inside in entry["balls"]
                for h in range(inside.shape[0])
                for pruned in [(~inside[h]).nonzero().flatten().tolist()]
            ]
        return layers

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
