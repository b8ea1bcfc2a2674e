"""The configuration every attnlab family shares: the skeleton's sizes and switches.

Each config class documents the options it declares in ``option_help`` (a name → help mapping, a ``Help`` where
the default is derived from other options); ``attnlab models --options`` and the docs tables read it from there.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

from transformers import PreTrainedConfig

from ..errors import ConfigError
from ..layers.ffn import FFNS
from ..layers.norms import NORMS
from ..options import Help, OptionDoc, field_default, format_default

POSITIONS = ("learned", "rope", "none")


class AttnLabConfig(PreTrainedConfig):
    """Skeleton fields: embeddings → n_layers × (norm → mixer → residual, norm → FFN → residual) → norm → head.

    Families subclass this and add the fields of their token mixer. ``d_ff=None`` resolves to 4·d_model for
    the GELU MLP and to 8/3·d_model (rounded up to a multiple of 64) for SwiGLU, which keeps the two at the
    same parameter count.
    """

    model_type = "attnlab"
    option_help = {
        "vocab_size": "vocabulary size; training sets it from the tokenizer",
        "d_model": "model width",
        "n_layers": "number of blocks",
        "n_heads": "attention heads; d_model must be divisible by it",
        "n_kv_heads": Help("key/value heads: = n_heads (MHA), 1 (MQA), a divisor of n_heads (GQA)", "n_heads"),
        "d_ff": Help("FFN width; SwiGLU's default, 8/3·d_model rounded up to 64, keeps the GELU MLP's parameter "
                     "count", "4·d_model (GELU), 8/3·d_model (SwiGLU)"),
        "ffn": "`gelu` (the GPT-2 MLP) or `swiglu`",
        "pos": "positions: `learned` (absolute), `rope` (base `rope_theta`) or `none`",
        "norm": "`layernorm` or `rmsnorm` (epsilon `norm_eps`)",
        "block_size": "context length in tokens",
        "rope_theta": "RoPE base frequency (with `pos=rope`)",
        "dropout": "dropout on the embeddings, the mixer outputs and the FFN",
        "bias": "biases in the linear layers",
        "norm_eps": "epsilon of the norms",
        "initializer_range": "standard deviation of the GPT-2 initialisation (residual output projections scaled "
                             "by 1/√(2·n_layers))",
        "tie_word_embeddings": "the LM head shares the token embedding matrix",
        "use_cache": "`generate()` keeps a cache (keys/values, or the family's own state) instead of recomputing "
                     "the context",
        "pad_token_id": "padding token id; training sets it from the tokenizer",
        "bos_token_id": "beginning-of-sequence token id",
        "eos_token_id": "end-of-sequence token id; training sets it from the tokenizer",
    }
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "max_position_embeddings": "block_size",
        "intermediate_size": "d_ff",
    }

    # What ``ffn`` and ``pos`` may be (class attributes, not options): a config of another model kind widens them.
    ffn_kinds = FFNS
    position_kinds = POSITIONS

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    ffn: str = "gelu"
    pos: str = "learned"
    norm: str = "layernorm"
    block_size: int = 256
    rope_theta: float = 10000.0
    dropout: float = 0.0
    bias: bool = True
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        for alias, name in self.attribute_map.items():  # aliases first, so derived defaults see them
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.ffn == "gelu" else -(-8 * self.d_model // 3 // 64) * 64
        super().__post_init__(**kwargs)
        self.check()

    @property
    def carries_memory(self) -> bool:
        """Whether the model keeps a Transformer-XL memory across forwards (segment streams, ``eval --memory``)."""
        return False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def check(self) -> None:
        """Raise ``ConfigError`` with one clear line for any setting the model cannot be built with."""
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if self.ffn not in self.ffn_kinds:
            raise ConfigError(f"ffn must be one of {self.ffn_kinds}, got {self.ffn!r}")
        if self.pos not in self.position_kinds:
            raise ConfigError(f"pos must be one of {self.position_kinds}, got {self.pos!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"pos='rope' needs an even head dimension, got d_model/n_heads = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class Presets(dict):
    """A family's named sizes. A renamed preset still works under its old name, with a ``FutureWarning``, but
    listings (``attnlab models``, error messages) show only the current names."""

    def __init__(self, presets: dict[str, dict], renamed: dict[str, str] | None = None):
        super().__init__(presets)
        self.renamed = dict(renamed or {})

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or name in self.renamed

    def __getitem__(self, name: str) -> dict:
        return super().__getitem__(self._current(name))

    def get(self, name: str, default: dict | None = None) -> dict | None:
        return self[name] if name in self else default

    def _current(self, name: str) -> str:
        new = self.renamed.get(name)
        if new is None:
            return name
        warnings.warn(f"preset {name!r} is now called {new!r}; the old name will be removed, use {new!r}",
                      FutureWarning, stacklevel=3)
        return new


# ------------------------------------------------------------------------------------------ documentation
def declared_options(config_class: type[AttnLabConfig]) -> list[str]:
    """The options attnlab declares on ``config_class`` and its attnlab ancestors (not transformers' own)."""
    names: list[str] = []
    for klass in reversed(config_class.__mro__):
        if isinstance(klass, type) and issubclass(klass, AttnLabConfig):
            names += [name for name in inspect.get_annotations(klass) if name not in names]
    return names


def own_options(config_class: type[AttnLabConfig]) -> list[str]:
    """What a family adds to the skeleton: its new options first, then the skeleton options it redefines or
    re-documents (another default, another meaning), then its own aliases."""
    own = set(inspect.get_annotations(config_class)) | set(vars(config_class).get("option_help", {}))
    shared = declared_options(AttnLabConfig)
    new = [name for name in declared_options(config_class) if name in own and name not in shared]
    changed = [name for name in shared if name in own and config_class is not AttnLabConfig]
    return new + changed + config_aliases(config_class)


def config_aliases(config_class: type[AttnLabConfig]) -> list[str]:
    """Alternative option names the family accepts beyond the skeleton's (e.g. a model card's own names)."""
    return [alias for alias in config_class.attribute_map if alias not in AttnLabConfig.attribute_map]


def option_help(config_class: type[AttnLabConfig], name: str) -> str | Help | None:
    """The help of ``name`` as the nearest class that documents it gives it (a family may re-document a skeleton
    option); None when no class does."""
    for klass in config_class.__mro__:
        entry = vars(klass).get("option_help", {}).get(name)
        if entry is not None:
            return entry
    return None


def option_doc(config_class: type[AttnLabConfig], name: str) -> OptionDoc:
    """One option of ``config_class`` with the default it has there and its help."""
    entry = option_help(config_class, name)
    text, derived = (entry.text, entry.default) if isinstance(entry, Help) else (entry or "", None)
    if name in config_aliases(config_class):
        return OptionDoc(name, f"= {config_class.attribute_map[name]}", text, literal=False)
    if derived is not None:
        return OptionDoc(name, derived, text, literal=False)
    field = next(f for f in dataclasses.fields(config_class) if f.name == name)
    return OptionDoc(name, format_default(field_default(field), ("true", "false")), text)


def option_docs(config_class: type[AttnLabConfig], names: list[str]) -> list[OptionDoc]:
    """``option_doc`` of each name, in that order."""
    return [option_doc(config_class, name) for name in names]
