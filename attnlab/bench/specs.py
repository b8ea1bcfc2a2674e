"""Which models to run and at what size: ``family[:preset[:key=value,...]]``, config files, ``all``.

Matching modes make a comparison fair without knowing anything about a family:

* ``dims``   — every model gets the same d_model, n_layers and n_heads (config overrides);
* ``params`` — the first model (the reference) gets those dims, every other model keeps n_layers and n_heads
  and gets the d_model whose parameter count (counted on the meta device) is closest to the reference's;
* ``none``   — presets as they are.

A family whose config rejects an override is reported as skipped with the config's one-line reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import AttnlabError, ConfigError
from ..inspect import count_parameters
from ..models import build_config, get_family, list_models
from ..models.config import AttnLabConfig

MATCH_MODES = ("dims", "params", "none")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class ModelSpec:
    """One model to run: a family, a preset and config overrides, under a unique label."""

    label: str
    family: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Resolved:
    """A spec with the config it runs with, or the reason it is skipped."""

    spec: ModelSpec
    config: AttnLabConfig | None = None
    params: int | None = None
    skipped: str | None = None


def parse_model_specs(items: list[str | dict], default_preset: str = "tiny") -> tuple[list[ModelSpec], list[Resolved]]:
    """Expand ``all``, parse each entry and make labels unique; families lacking a preset come back skipped."""
    specs: list[ModelSpec] = []
    skipped: list[Resolved] = []
    for item in items:
        if isinstance(item, str) and item.split(":")[0] == "all":
            preset = item.split(":")[1] if ":" in item else default_preset
            for family in list_models():
                spec = ModelSpec(f"{family}:{preset}", family, preset)
                if preset in get_family(family).presets:
                    specs.append(spec)
                else:
                    skipped.append(Resolved(spec, skipped=f"family {family} has no preset {preset!r}"))
        else:
            specs.append(parse_model_spec(item, default_preset))
    if not specs and not skipped:
        raise ConfigError("no models given")
    return _unique_labels(specs), skipped


def parse_model_spec(item: str | dict, default_preset: str = "tiny") -> ModelSpec:
    """``gpt``, ``gpt:tiny``, ``gpt:tiny:pos=rope,n_kv_heads=1``, a YAML/JSON file, or a mapping."""
    if isinstance(item, dict):
        return _spec_from_mapping(item, default_preset, "model entry")
    if item.endswith(CONFIG_SUFFIXES) or Path(item).is_file():
        return _spec_from_file(Path(item), default_preset)
    family, _, rest = item.partition(":")
    preset, _, options = rest.partition(":")
    preset = preset or default_preset
    overrides = _parse_options(options, item) if options else {}
    _check_family_preset(family, preset)
    label = item if rest else f"{family}:{preset}"
    return ModelSpec(label, family, preset, overrides)


def _spec_from_file(path: Path, default_preset: str) -> ModelSpec:
    from ..training.config import read_config_file

    values = read_config_file(path)
    spec = _spec_from_mapping(values, default_preset, str(path))
    return ModelSpec(values.get("label") or path.stem, spec.family, spec.preset, spec.overrides)


def _spec_from_mapping(values: dict, default_preset: str, where: str) -> ModelSpec:
    family = values.get("model") or values.get("family")
    if not family:
        raise ConfigError(f"{where}: needs a 'model' (family) key")
    preset = values.get("preset") or default_preset
    overrides = dict(values.get("model_overrides") or values.get("overrides") or {})
    _check_family_preset(family, preset)
    return ModelSpec(values.get("label") or f"{family}:{preset}", family, preset, overrides)


def _parse_options(options: str, item: str) -> dict[str, Any]:
    overrides = {}
    for pair in options.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"model {item!r}: options must be key=value[,key=value], got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _check_family_preset(family: str, preset: str) -> None:
    fam = get_family(family)  # unknown family: ConfigError listing the known ones
    if preset not in fam.presets:
        raise ConfigError(f"unknown preset {preset!r} for {family}; choose one of {sorted(fam.presets)}")


def _unique_labels(specs: list[ModelSpec]) -> list[ModelSpec]:
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        n = seen.get(spec.label, 0)
        seen[spec.label] = n + 1
        out.append(spec if n == 0 else ModelSpec(f"{spec.label}#{n + 1}", spec.family, spec.preset, spec.overrides))
    return out


def safe_name(label: str) -> str:
    """A label as a file or directory name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


# ------------------------------------------------------------------------------------------ matching
def count_params(config: AttnLabConfig, family: str) -> int:
    """Parameters of a config, built on the meta device (no memory, milliseconds)."""
    with torch.device("meta"):
        model = get_family(family).model_class(config)
    return count_parameters(model)["parameters"]


def resolve(
    specs: list[ModelSpec],
    match: str,
    *,
    dims: dict[str, int | None],
    fixed: dict[str, Any],
) -> list[Resolved]:
    """Configs for ``specs`` under ``match``; ``fixed`` (vocab_size, block_size) applies to every model.

    ``dims`` (d_model, n_layers, n_heads) left as None are taken from the first model's preset.
    """
    if match not in MATCH_MODES:
        raise ConfigError(f"match must be one of {MATCH_MODES}, got {match!r}")
    resolved: list[Resolved] = []
    dims = dict(dims)
    target: int | None = None
    for spec in specs:
        try:
            base = build_config(spec.family, spec.preset, **spec.overrides)
            if match == "none":
                config = build_config(spec.family, spec.preset, **{**spec.overrides, **fixed})
            else:
                for key in dims:
                    if dims[key] is None:
                        dims[key] = int(getattr(base, key))  # the first model's preset fills unset dims
                sized = {**spec.overrides, **{k: v for k, v in dims.items()}, **fixed}
                config = build_config(spec.family, spec.preset, **sized)
                if match == "params":
                    if target is None:
                        target = count_params(config, spec.family)
                    else:
                        config = _match_params(spec, sized, target)
            resolved.append(Resolved(spec, config, count_params(config, spec.family)))
        except (AttnlabError, ValueError, TypeError) as exc:
            resolved.append(Resolved(spec, skipped=_one_line(exc)))
    return resolved


def _match_params(spec: ModelSpec, sized: dict[str, Any], target: int) -> AttnLabConfig:
    """The d_model (a multiple of 2·n_heads, so heads stay even-sized) whose parameter count is closest."""
    n_heads, d_ref = int(sized["n_heads"]), int(sized["d_model"])
    step = 2 * n_heads
    best: tuple[int, AttnLabConfig] | None = None
    errors = []
    for d_model in range(step, 4 * d_ref + 1, step):
        try:
            config = build_config(spec.family, spec.preset, **{**sized, "d_model": d_model})
        except (AttnlabError, ValueError) as exc:
            errors.append(_one_line(exc))
            continue
        gap = abs(count_params(config, spec.family) - target)
        if best is None or gap < best[0]:
            best = (gap, config)
    if best is None:
        raise ConfigError(f"no d_model matches {target:,} parameters ({errors[-1] if errors else 'no candidate'})")
    return best[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" if not isinstance(exc, AttnlabError) else text[0]
