"""Which models to run and at what size: ``family[:preset[:key=value,...]]``, config files, ``all``.

Matching modes make a comparison fair without knowing anything about a family:

* ``dims``   — every model gets the same d_model, n_layers and n_heads (config overrides);
* ``params`` — the first model (the reference) gets those dims, every other model keeps n_layers and n_heads
  and gets the d_model whose parameter count (counted on the meta device) is closest to the reference's;
* ``none``   — presets as they are.

A family whose config rejects an override is reported as skipped with the config's one-line reason.

A model entry given as a mapping may also carry measurement options (``MEASURE_OPTIONS``: its own
``seq_lens``, ``contexts``, ``parts``...) that replace the run's for that model only. A spec whose family
part names a reference implementation (``references.REFERENCES``, e.g. ``dual-attention``) resolves its
config exactly like that family's, and is built by the reference's own code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import AttnlabError, ConfigError
from ..summary import count_parameters
from ..models import build_config, get_family, list_models
from ..models.config import AttnLabConfig
from .references import REFERENCES, build_reference, check_available

MATCH_MODES = ("dims", "params", "none")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
PARTS = ("train", "prefill", "decode")
# Row kinds (the ``kind`` field) and their names in tables; a target may use either.
KIND_NAMES = {"train": "train", "prefill": "prefill", "decode_cache": "decode", "decode_nocache": "recompute"}
# What a model entry (mapping) may set for itself, replacing the run's value for that model only.
MEASURE_OPTIONS = ("seq_lens", "contexts", "parts", "batch_size", "no_cache", "train_with_cache",
                   "activation_checkpointing")
CHECKPOINTING_MODES = ("none", "full", "selective")  # attnlab.models.checkpointing.MODES
SPEC_KEYS = ("model", "family", "preset", "model_overrides", "overrides", "label")


@dataclass(frozen=True)
class ModelSpec:
    """One model to run: a family, a preset and config overrides, under a unique label.

    ``measure`` holds the entry's own measurement options (keys of ``MEASURE_OPTIONS``); ``reference`` names
    a reference implementation (``references.REFERENCES``) that is built instead of the family's model.
    """

    label: str
    family: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None


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
    name, _, rest = item.partition(":")
    preset, _, options = rest.partition(":")
    preset = preset or default_preset
    overrides = _parse_options(options, item) if options else {}
    family, reference = _family_of(name)
    _check_family_preset(family, preset)
    label = item if rest else f"{name}:{preset}"
    return ModelSpec(label, family, preset, overrides, reference=reference)


def _spec_from_file(path: Path, default_preset: str) -> ModelSpec:
    from ..training.config import read_config_file

    values = read_config_file(path)
    spec = _spec_from_mapping(values, default_preset, str(path), strict=False)  # a training config: more keys
    return dataclasses.replace(spec, label=values.get("label") or path.stem)


def _spec_from_mapping(values: dict, default_preset: str, where: str, strict: bool = True) -> ModelSpec:
    """A suite's model entry; ``strict`` refuses unknown keys (a misspelt ``seq_lens`` must not pass silently)."""
    name = values.get("model") or values.get("family")
    if not name:
        raise ConfigError(f"{where}: needs a 'model' (family) key")
    unknown = sorted(set(values) - set(SPEC_KEYS) - set(MEASURE_OPTIONS))
    if strict and unknown:
        raise ConfigError(f"{where} {name!r}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(SPEC_KEYS + MEASURE_OPTIONS)}")
    preset = values.get("preset") or default_preset
    overrides = dict(values.get("model_overrides") or values.get("overrides") or {})
    family, reference = _family_of(name)
    _check_family_preset(family, preset)
    label = values.get("label") or f"{name}:{preset}"
    measure = {k: values[k] for k in MEASURE_OPTIONS if values.get(k) is not None}
    check_measure_options(measure, f"model {label!r}: ")
    return ModelSpec(label, family, preset, overrides, measure, reference)


def _family_of(name: str) -> tuple[str, str | None]:
    """(family, reference): a reference implementation takes the configs of the family it reimplements."""
    if name in REFERENCES:
        return REFERENCES[name].family, name
    return name, None


def check_measure_options(values: dict[str, Any], where: str = "") -> None:
    """One-line ConfigError for a bad measurement option (the run's own, or a model's ``where``)."""
    for name in ("seq_lens", "contexts"):
        if name in values:
            lengths = values[name]
            if (not isinstance(lengths, list) or not lengths
                    or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in lengths)):
                raise ConfigError(f"{where}{name} must be a non-empty list of positive integers, got {lengths}")
    if "parts" in values:
        parts = values["parts"]
        if not isinstance(parts, list) or not parts or set(parts) - set(PARTS):
            raise ConfigError(f"{where}parts must be some of {PARTS}, got {parts}")
    if "batch_size" in values:
        if not isinstance(values["batch_size"], int) or values["batch_size"] <= 0:
            raise ConfigError(f"{where}batch_size must be positive, got {values['batch_size']}")
    for name in ("no_cache", "train_with_cache"):
        if name in values and not isinstance(values[name], bool):
            raise ConfigError(f"{where}{name} must be true or false, got {values[name]!r}")
    if values.get("activation_checkpointing", "none") not in CHECKPOINTING_MODES:
        raise ConfigError(f"{where}activation_checkpointing must be one of {CHECKPOINTING_MODES}, "
                          f"got {values['activation_checkpointing']!r}")


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
        out.append(spec if n == 0 else dataclasses.replace(spec, label=f"{spec.label}#{n + 1}"))
    return out


def safe_name(label: str) -> str:
    """A label as a file or directory name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


# ------------------------------------------------------------------------------------------ building
def model_factory(family: str, reference: str | None = None) -> Callable[[AttnLabConfig], torch.nn.Module]:
    """What builds a model from a resolved config: the family's class, or a reference implementation's."""
    if reference is not None:
        return lambda config: build_reference(reference, config)
    return get_family(family).model_class


def build_model(spec: ModelSpec, config: AttnLabConfig) -> torch.nn.Module:
    """The model ``spec`` runs, with the config it was resolved to."""
    return model_factory(spec.family, spec.reference)(config)


# ------------------------------------------------------------------------------------------ matching
def count_params(config: AttnLabConfig, family: str, reference: str | None = None) -> int:
    """Parameters of a config, built on the meta device (no memory, milliseconds)."""
    with torch.device("meta"):
        model = model_factory(family, reference)(config)
    return count_parameters(model)["parameters"]


def resolve(
    specs: list[ModelSpec],
    match: str,
    *,
    dims: dict[str, int | None],
    fixed: dict[str, Any] | Callable[[ModelSpec], dict[str, Any]],
) -> list[Resolved]:
    """Configs for ``specs`` under ``match``; ``fixed`` (vocab_size, block_size) applies to every model.

    ``fixed`` may be a function of the spec, for values that depend on what is measured for that model (a
    block size long enough for its own lengths). ``dims`` (d_model, n_layers, n_heads) left as None are
    taken from the first model's preset. A reference implementation that is not installed is skipped.
    """
    if match not in MATCH_MODES:
        raise ConfigError(f"match must be one of {MATCH_MODES}, got {match!r}")
    resolved: list[Resolved] = []
    dims = dict(dims)
    target: int | None = None
    for spec in specs:
        try:
            if spec.reference is not None:
                check_available(spec.reference)
            values = fixed(spec) if callable(fixed) else fixed
            base = build_config(spec.family, spec.preset, **spec.overrides)
            if match == "none":
                config = build_config(spec.family, spec.preset, **{**spec.overrides, **values})
            else:
                for key in dims:
                    if dims[key] is None:
                        dims[key] = int(getattr(base, key))  # the first model's preset fills unset dims
                sized = {**spec.overrides, **{k: v for k, v in dims.items()}, **values}
                config = build_config(spec.family, spec.preset, **sized)
                if match == "params":
                    if target is None:
                        target = count_params(config, spec.family, spec.reference)
                    else:
                        config = _match_params(spec, sized, target)
            resolved.append(Resolved(spec, config, count_params(config, spec.family, spec.reference)))
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
        gap = abs(count_params(config, spec.family, spec.reference) - target)
        if best is None or gap < best[0]:
            best = (gap, config)
    if best is None:
        raise ConfigError(f"no d_model matches {target:,} parameters ({errors[-1] if errors else 'no candidate'})")
    return best[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}" if not isinstance(exc, AttnlabError) else text[0]
