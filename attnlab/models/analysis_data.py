"""The JSON-ready pieces the models' analysis hooks return (``analysis_layers``/``analysis_probes``).

They live here, beside the models and with nothing but torch to import, so that the modeling code stays
self-contained: ``attnlab export`` copies it into a model folder that loads without attnlab installed.
``attnlab.analysis`` re-exports both.
"""

from __future__ import annotations

from typing import Any

import torch

DIGITS = 5  # rounding of exported floats: plenty for a heatmap, keeps the JSON small


def to_json(t: torch.Tensor) -> Any:
    """Tensor → nested lists of rounded floats; non-finite entries become None (JSON null)."""
    t = t.detach().double().cpu()
    finite = torch.isfinite(t)
    values = t.round(decimals=DIGITS).tolist()
    if bool(finite.all()):
        return values
    mask = finite.tolist()

    def clean(v, m):
        return [clean(a, b) for a, b in zip(v, m)] if isinstance(v, list) else (v if m else None)

    return clean(values, mask)


def attention_entry(
    weights: torch.Tensor, head_labels: list[str], key_labels: list[str], title: str = "Softmax attention"
) -> dict[str, Any]:
    """Softmax maps (heads, T, S) of one layer with a label per head and per key, as JSON-ready data."""
    return {"weights": to_json(weights), "head_labels": head_labels, "key_labels": key_labels, "title": title}


def relations_entry(values: torch.Tensor, *, activation: str, symmetric: bool) -> dict[str, Any]:
    """DAT's relations r(x_i, x_j) of one layer, (n_relations, queries, keys) with NaN where not shown (a causal
    layer's future pairs), as JSON-ready heatmaps labelled ``relation ℓ``."""
    return {"values": to_json(values), "labels": [f"relation {l}" for l in range(values.shape[0])],
            "activation": activation, "symmetric": symmetric}


def grid_maps(rows: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., patches) weights over an image's patches, in raster order, reshaped to the patch grid (..., rows, cols)."""
    if rows.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"{rows.shape[-1]} patch values do not fill a {grid[0]}×{grid[1]} grid")
    return rows.reshape(*rows.shape[:-1], *grid)
