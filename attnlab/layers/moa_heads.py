"""The non-attention heads of a mixture-of-attentions block, the token-wise router that mixes heads, and the
generation cache of the MoA metric LM (metric heads' keys/values plus the causal convolutions' last inputs).

Every head maps (B, T, D) → (B, T, D) causally and has the mixer signature ``(x, ctx) -> (y, weights|None)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache

from .context import MixerContext

HEAD_TYPES = ("conv", "mha", "mqa", "channel")  # the four heads of a MoA block, in router order


class LocalConvHead(nn.Module):
    """Depthwise-separable causal 1-D convolution: depthwise conv over time → GELU → pointwise linear.

    Causal by left padding only: output t sees inputs t−kernel+1..t. Padding tokens are zeroed before the conv,
    so a left-padded row computes exactly what the unpadded row computes with its implicit zero history. With a
    generation cache the zero padding is replaced by the last kernel−1 inputs, kept under ``cache_key``.
    """

    def __init__(self, d_model: int, kernel: int, *, cache_key: str, bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        self.kernel = kernel
        self.cache_key = cache_key
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=bias)
        self.pointwise = nn.Linear(d_model, d_model, bias=bias)
        self.pointwise.is_residual_projection = True
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, None]:
        if ctx.key_padding_mask is not None:
            x = x * ctx.key_padding_mask[:, -x.shape[1] :, None].to(x.dtype)
        h = x.transpose(1, 2)  # (B, D, T)
        if ctx.cache is not None:
            h = ctx.cache.conv_window(self.cache_key, h, self.kernel - 1)
        else:
            h = F.pad(h, (self.kernel - 1, 0))
        h = self.depthwise(h).transpose(1, 2)
        return self.proj_drop(self.pointwise(F.gelu(h))), None


class ChannelMixHead(nn.Module):
    """Per-token MLP D → hidden → GELU → D: mixes channels, never positions."""

    def __init__(self, d_model: int, hidden: int, *, bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.down.is_residual_projection = True
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, None]:
        return self.proj_drop(self.down(F.gelu(self.up(x)))), None


@dataclass
class Routing:
    """A router's decision for each token over E heads.

    weights: (B, T, E) convex mixture weights, softmax(logits / temperature); they sum to 1 per token.
    gates: (B, T, E) router-bias gates in (0, 2) that scale each head's contribution up or down (1 at init).
    scale, shift: (B, T, E, D) FiLM feature gates: head e's output becomes (1 + scale_e) ⊙ y_e + shift_e.
    """

    weights: torch.Tensor
    gates: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor

    def mix(self, outputs: torch.Tensor) -> torch.Tensor:
        """Σ_e weights_e · gates_e · ((1 + scale_e) ⊙ y_e + shift_e) for head outputs (B, T, E, D)."""
        modulated = outputs * (1 + self.scale) + self.shift
        return ((self.weights * self.gates).unsqueeze(-1) * modulated).sum(dim=-2)


class TokenRouter(nn.Module):
    """x → Linear → GELU → dropout → {mixture logits, bias gates, FiLM scale/shift} for ``n_experts`` heads.

    The three output layers are marked ``zero_init``: a fresh router mixes heads uniformly with identity
    gates, and learns to specialise from there.
    """

    def __init__(self, d_model: int, n_experts: int, hidden: int, *, dropout: float = 0.0, temperature: float = 1.0):
        super().__init__()
        self.n_experts, self.temperature = n_experts, temperature
        self.hidden = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout))
        self.logits = nn.Linear(hidden, n_experts)
        self.gates = nn.Linear(hidden, n_experts)
        self.film = nn.Linear(hidden, 2 * n_experts * d_model)
        for layer in (self.logits, self.gates, self.film):
            layer.zero_init = True

    def forward(self, x: torch.Tensor) -> Routing:
        h = self.hidden(x)
        weights = (self.logits(h).float() / self.temperature).softmax(dim=-1).to(x.dtype)
        gates = 2 * torch.sigmoid(self.gates(h))
        scale, shift = self.film(h).unflatten(-1, (2, self.n_experts, -1)).unbind(dim=-3)
        return Routing(weights, gates, scale, shift)


class MixtureOfHeads(nn.Module):
    """Runs every head on the same input and mixes their outputs per token with a ``TokenRouter``.

    ``output_attentions`` returns the weights of the first head that produces any (the metric MHA head);
    the routing itself is inspected through the router's output (see ``MoAMetricForCausalLM.routing``).
    """

    def __init__(self, heads: dict[str, nn.Module], router: TokenRouter):
        super().__init__()
        if router.n_experts != len(heads):
            raise ValueError(f"router has {router.n_experts} outputs for {len(heads)} heads")
        self.heads = nn.ModuleDict(heads)
        self.router = router

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs, weights = [], None
        for head in self.heads.values():
            y, w = head(x, ctx)
            outputs.append(y)
            weights = w if weights is None else weights
        return self.router(x).mix(torch.stack(outputs, dim=-2)), weights


class MoACache(DynamicCache):
    """A ``DynamicCache`` holding two key/value layers per block (metric MHA at 2·l, metric MQA at 2·l + 1)
    and, per causal convolution, the last ``kernel − 1`` inputs it saw (its only state).

    ``get_seq_length()`` is the length of layer 0's keys, the number of tokens processed so far.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_states: dict[str, torch.Tensor] = {}

    def conv_window(self, key: str, x: torch.Tensor, width: int) -> torch.Tensor:
        """Prepend the stored ``width`` previous inputs (zeros at the start) to x (B, C, T); keep the new tail."""
        history = self.conv_states.get(key)
        window = F.pad(x, (width, 0)) if history is None else torch.cat([history.to(x.dtype), x], dim=-1)
        self.conv_states[key] = window[..., window.shape[-1] - width :]
        return window

    def _map_conv_states(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.conv_states = {key: fn(state) for key, state in self.conv_states.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_conv_states(lambda s: s.index_select(0, beam_idx.to(s.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_conv_states(lambda s: s.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_conv_states(lambda s: s[indices])

    def reset(self) -> None:
        super().reset()
        self.conv_states.clear()

    def crop(self, max_length: int) -> None:
        """Convolution states cannot be rolled back, so assisted/speculative decoding is not supported."""
        raise NotImplementedError("MoACache cannot crop: causal convolution states keep no history")
