"""Reference implementations benchmarked beside ours: another package's model at our config's dimensions.

``dual-attention`` (the DAT authors' package) is built at equal numerics: our weights converted from theirs give
the same logits. ``leap-transformer`` computes a different LEAP (``attnlab.models.leap.reference`` lists how)
at the same width, depth, heads, windows and context. ``hf-gpt2`` is transformers' GPT-2 at our GPT
baseline's size (``attnlab.models.gpt.reference``).

A spec ``NAME[:preset[:key=value,...]]`` whose NAME is in ``REFERENCES`` resolves its config exactly like
the family the reference reimplements (same presets, overrides and matching), then the reference's
``build`` turns that config into the other package's model. ``ReferenceLM`` wraps it so that the bench
calls it as it calls ours (``input_ids``, ``shift_labels``/``labels``, ``use_cache``, ``logits_to_keep``)
and gets an output with ``.loss`` and ``.logits``.

A reference whose package is not importable is skipped with the line that installs it; the measurements it
cannot do (``unsupported``: row kind → status) become rows with that status instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..errors import ConfigError
from ..models.config import AttnLabConfig
from ..models.hf_compat import one_cache

IGNORE_INDEX = -100  # what our losses skip (transformers' convention)

# (model, input_ids, targets aligned with input_ids or None) -> (logits, loss or None)
LossAndLogits = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Reference:
    """How to build and call another package's implementation of one of our families."""

    name: str
    family: str
    module: str
    distribution: str
    install: str
    build: Callable[[AttnLabConfig], nn.Module]
    call: LossAndLogits
    unsupported: dict[str, str] = field(default_factory=dict)

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown version"


class ReferenceLM(nn.Module):
    """Another package's causal LM behind the keyword interface of our models (what ``bench`` calls).

    ``config`` is our resolved config (the bench reads ``vocab_size`` from it); ``unsupported`` maps row
    kinds the implementation cannot do to the status their rows get.
    """

    def __init__(self, model: nn.Module, config: AttnLabConfig, reference: Reference):
        super().__init__()
        self.model = model
        self.config = config
        self.reference = reference
        self.unsupported = dict(reference.unsupported)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        cache: Any = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``labels`` are the inputs (shifted here, as transformers does), ``shift_labels`` already the next
        tokens; ``use_cache`` is ignored (no cache: every call processes the whole input)."""
        if one_cache(cache, past_key_values) is not None:
            raise ValueError(f"{self.reference.name} has no KV cache")
        logits, loss = self.reference.call(self.model, input_ids, _targets(labels, shift_labels))
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(loss=loss, logits=logits)


def _targets(labels: torch.Tensor | None, shift_labels: torch.Tensor | None) -> torch.Tensor | None:
    """Next-token targets aligned with the inputs; the last position of shifted ``labels`` is ignored."""
    if shift_labels is not None:
        return shift_labels
    if labels is None:
        return None
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def check_available(name: str) -> None:
    """ConfigError (the model is then skipped) with the install line when the package cannot be imported."""
    ref = REFERENCES[name]
    try:
        importlib.import_module(ref.module)
    except ImportError as exc:
        raise ConfigError(f"{name} is not importable ({exc.name or exc}); install it with: {ref.install}") from None


def build_reference(name: str, config: AttnLabConfig) -> ReferenceLM:
    """The reference ``name``'s model for our ``config``, wrapped to be called like ours."""
    check_available(name)
    ref = REFERENCES[name]
    return ReferenceLM(ref.build(config), config, ref)


# ------------------------------------------------------------------------------------- dual-attention
def _build_dual_attention(config: AttnLabConfig) -> nn.Module:
    from ..models.dat.reference import build_authors_model

    return build_authors_model(config)


def _call_dual_attention(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None):
    """Their ``forward(x, targets)`` returns (logits, loss) and ignores target -1, where we ignore -100."""
    if targets is not None:
        targets = targets.masked_fill(targets == IGNORE_INDEX, -1)
    return model(x, targets)


# ------------------------------------------------------------------------------------- leap-transformer
def _build_leap_transformer(config: AttnLabConfig) -> nn.Module:
    from ..models.leap.reference import build_reference_model

    return build_reference_model(config)


def _call_logits_then_loss(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None):
    """``model(x).logits``, and the next-token loss computed from them here, as a training loop around the
    model would (leap-transformer's own ``labels`` shift inside and know no ignore index). No cache is kept."""
    logits = model(x, use_cache=False).logits
    loss = None
    if targets is not None:
        loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)
    return logits, loss


# ------------------------------------------------------------------------------------------- hf-gpt2
def _build_gpt2(config: AttnLabConfig) -> nn.Module:
    from ..models.gpt.reference import build_gpt2

    return build_gpt2(config)


REFERENCES: dict[str, Reference] = {
    "dual-attention": Reference(
        name="dual-attention",
        family="dat",
        module="dual_attention.language_models",
        distribution="dual-attention",
        install="pip install --no-deps dual-attention==0.0.7 einops",
        build=_build_dual_attention,
        call=_call_dual_attention,
        unsupported={"decode_cache": "n/a: no KV cache in dual-attention"},
    ),
    "leap-transformer": Reference(
        name="leap-transformer",
        family="leap",
        module="leap",
        distribution="leap-transformer",
        install="pip install --no-deps leap-transformer==1.0.1",
        build=_build_leap_transformer,
        call=_call_logits_then_loss,
        unsupported={"decode_cache": "n/a: no recurrent state in leap-transformer"},
    ),
    "hf-gpt2": Reference(
        name="hf-gpt2",
        family="gpt",
        module="transformers.models.gpt2",
        distribution="transformers",
        install="pip install transformers",
        build=_build_gpt2,
        call=_call_logits_then_loss,
        unsupported={"decode_cache": "n/a: references are timed without a cache"},
    ),
}
