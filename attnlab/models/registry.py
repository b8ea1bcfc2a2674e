"""The families attnlab knows: name → (config class, model class, presets), registered with the Auto classes."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import ConfigError
from .config import AttnLabConfig
from .skeleton import AttnLabForCausalLM


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type[AttnLabConfig]
    model_class: type[AttnLabForCausalLM]
    presets: dict[str, dict] = field(default_factory=dict)
    description: str = ""


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Make a family available by name and to ``AutoConfig``/``AutoModelForCausalLM``."""
    if "debug" not in family.presets:
        raise ValueError(f"family {family.name!r} must define a 'debug' preset")
    FAMILIES[family.name] = family
    AutoConfig.register(family.config_class.model_type, family.config_class, exist_ok=True)
    AutoModelForCausalLM.register(family.config_class, family.model_class, exist_ok=True)


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}") from None


def family_of_config(config: AttnLabConfig) -> Family:
    for family in FAMILIES.values():
        if type(config) is family.config_class:
            return family
    raise ConfigError(f"no attnlab family uses config class {type(config).__name__}")


def list_models() -> list[str]:
    """Names of every registered family, e.g. ``['gpt', ...]``."""
    return sorted(FAMILIES)


def build_config(family: str, preset: str | None = "debug", **overrides) -> AttnLabConfig:
    """The family's config for a named preset, with ``overrides`` applied on top."""
    fam = get_family(family)
    values: dict = {}
    if preset is not None:
        if preset not in fam.presets:
            raise ConfigError(f"unknown preset {preset!r} for {family}; choose one of {sorted(fam.presets)}")
        values.update(fam.presets[preset])
    unknown = set(overrides) - _config_fields(fam.config_class)
    if unknown:
        raise ConfigError(f"unknown {family} config option(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    return fam.config_class(**values)


def _config_fields(config_class: type[AttnLabConfig]) -> set[str]:
    from dataclasses import fields

    names = {f.name for f in fields(config_class)}
    return names | set(config_class.attribute_map)


def create_model(family: str, preset: str | None = "debug", **overrides) -> AttnLabForCausalLM:
    """Build a freshly initialised model, e.g. ``create_model("gpt", "tiny", vocab_size=4096)``."""
    config = build_config(family, preset, **overrides)
    return get_family(family).model_class(config)
