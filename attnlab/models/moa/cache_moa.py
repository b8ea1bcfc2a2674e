"""Generation cache of the MoA metric LM: metric heads' keys/values plus the causal convolutions' last inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache


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
