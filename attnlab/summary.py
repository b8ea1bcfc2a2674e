"""Parameter counts and configs, computed on the meta device so even a 13B preset costs no memory."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from .models import build_config
from .models.registry import get_model_kind, model_kind_of_config


def count_parameters(model: torch.nn.Module) -> dict[str, Any]:
    """Total, non-embedding and per-component counts; tied weights are counted once."""
    seen, total, embedding, by_component = set(), 0, 0, Counter()
    for name, param in model.named_parameters(remove_duplicate=True):
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if "embed" in name:
            embedding += param.numel()
        parts = name.split(".")
        component = ".".join(parts[:2]) if parts[0] == "model" and parts[1] != "layers" else (
            f"{parts[0]}.layers" if parts[1:2] == ["layers"] else parts[0])  # model.layers, encoder.layers...
        by_component[component] += param.numel()
    return {"parameters": total, "non_embedding_parameters": total - embedding, "by_component": dict(by_component)}


def describe(run: str | None, family: str, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if run is not None:
        from .loading import check_weights, has_weights, load_config

        config = load_config(run, causal_only=False)  # checked: a damaged or foreign config is one line
        fam = model_kind_of_config(config)
        if has_weights(run):
            check_weights(run, config, fam)  # the header only: info reports weights that do not fit
    else:
        config = build_config(family, preset, **overrides)
        fam = get_model_kind(family)
    with torch.device("meta"):
        model = fam.model_class(config)
    return {"family": fam.name, "model_type": config.model_type, **count_parameters(model),
            "config": config.to_diff_dict()}
