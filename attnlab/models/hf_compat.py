"""One name for the generation cache across transformers 5.x.

transformers 5.24 renamed ``past_key_values`` to ``cache``: the models' forward keyword, the output field of
``CausalLMOutputWithPast`` and the key ``generate()`` keeps in its model kwargs (the old name is deprecated,
to be removed in 5.40). attnlab's models take ``cache=`` on every 5.x release and still accept
``past_key_values=`` (what ``generate()`` passes before 5.24); the output carries the cache under the field
the installed release defines (``CACHE_FIELD``, ``SEQ2SEQ_CACHE_FIELD`` for sequence-to-sequence outputs), which
``output_cache`` reads without a deprecation warning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast, Seq2SeqLMOutput


def _cache_field(output_class: type) -> str:
    return "cache" if "cache" in {f.name for f in dataclasses.fields(output_class)} else "past_key_values"


CACHE_FIELD = _cache_field(CausalLMOutputWithPast)
SEQ2SEQ_CACHE_FIELD = _cache_field(Seq2SeqLMOutput)


def output_cache(output: Any) -> Cache | None:
    """The cache a model output carries, whichever name this transformers release gives it."""
    return getattr(output, SEQ2SEQ_CACHE_FIELD if isinstance(output, Seq2SeqLMOutput) else CACHE_FIELD)


def one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache a forward call was given under either name; both at once is an error, as in transformers."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache once: cache=... (past_key_values is its name before transformers 5.24)")
    return cache if cache is not None else past_key_values


class GeneratesWithOwnCache:
    """Mixin for a model with ``make_cache()``: ``generate()`` starts from the model's own cache (recurrent state,
    conv windows, relational heads, an encoder-decoder pair...) instead of transformers' default one."""

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        wants_default = generation_config.cache_implementation in (None, "dynamic")
        if model_kwargs.get(CACHE_FIELD) is None and generation_config.use_cache and wants_default:
            model_kwargs[CACHE_FIELD] = self.make_cache()
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
