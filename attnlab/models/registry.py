"""The families attnlab knows: name → (config class, model class, presets), registered with the Auto classes.

Families are causal LMs (what training, evaluation and the generic causal tests run over). Other model kinds
built from the same layers (DAT's sequence-to-sequence and vision models) are registered apart, as *model
kinds*: ``attnlab info``, ``build_config`` and ``create_model`` resolve them by name, ``list_models`` does not
list them.
"""

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
MODEL_KINDS: dict[str, Family] = {}  # models that are not causal LMs (seq2seq, vision), by name


def register_family(family: Family) -> None:
    """Make a family available by name and to ``AutoConfig``/``AutoModelForCausalLM``."""
    if "debug" not in family.presets:
        raise ValueError(f"family {family.name!r} must define a 'debug' preset")
    FAMILIES[family.name] = family
    AutoConfig.register(family.config_class.model_type, family.config_class, exist_ok=True)
    AutoModelForCausalLM.register(family.config_class, family.model_class, exist_ok=True)


def register_model_kind(kind: Family, auto_class: type) -> None:
    """Make a model that is not a causal LM available by name (``attnlab info``, ``create_model``) and to
    ``AutoConfig`` and ``auto_class`` (e.g. ``AutoModelForSeq2SeqLM``), without making it a family."""
    if "debug" not in kind.presets:
        raise ValueError(f"model kind {kind.name!r} must define a 'debug' preset")
    MODEL_KINDS[kind.name] = kind
    AutoConfig.register(kind.config_class.model_type, kind.config_class, exist_ok=True)
    auto_class.register(kind.config_class, kind.model_class, exist_ok=True)


def get_model_kind(name: str) -> Family:
    """A family or another model kind, by name."""
    kind = FAMILIES.get(name) or MODEL_KINDS.get(name)
    if kind is None:
        raise ConfigError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)} "
                          f"or a model kind {sorted(MODEL_KINDS)}")
    return kind


def model_kind_of_config(config: AttnLabConfig) -> Family:
    """The family or model kind whose config class ``config`` is."""
    for kind in (*FAMILIES.values(), *MODEL_KINDS.values()):
        if type(config) is kind.config_class:
            return kind
    raise ConfigError(f"no attnlab model uses config class {type(config).__name__}")


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
    """The family's (or model kind's) config for a named preset, with ``overrides`` applied on top."""
    fam = get_model_kind(family)
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
    # keyword_options: what a config takes as a keyword but keeps otherwise (HF's num_labels sets id2label)
    return names | set(config_class.attribute_map) | set(getattr(config_class, "keyword_options", ()))


def create_model(family: str, preset: str | None = "debug", **overrides) -> AttnLabForCausalLM:
    """Build a freshly initialised model, e.g. ``create_model("gpt", "tiny", vocab_size=4096)`` (a model kind
    too: ``create_model("dat-vision", "debug")``)."""
    config = build_config(family, preset, **overrides)
    return get_model_kind(family).model_class(config)
