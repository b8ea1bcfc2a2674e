"""Meta-device init: a 13 B preset built without memory; small ones materialised like eager builds."""

from __future__ import annotations

import math
import os

import pytest
import torch

import attnlab
from attnlab.models import build_on_meta, materialize

GiB = 2**30


def resident_bytes() -> int:
    """The process's resident set size now (not its peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def options(family: str) -> dict:
    """RoPE everywhere (its non-persistent buffers must come back); tied embeddings, as in the presets."""
    return {} if family == "lsw" else {"pos": "rope"}


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
def test_a_13b_preset_builds_on_meta_without_memory():
    before = resident_bytes()
    model = build_on_meta("lsw", "xxl")
    grown = resident_bytes() - before
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters > 12.9e9  # 52 GB in fp32
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    assert grown < 1 * GiB, f"building on meta grew the resident size by {grown / GiB:.2f} GiB"


def assert_same_initialisation(eager: torch.nn.Module, built: torch.nn.Module) -> None:
    """Same names, shapes and dtypes; constant inits equal; random ones with the same mean and spread."""
    expected, got = dict(eager.named_parameters()), dict(built.named_parameters())
    assert expected.keys() == got.keys()
    for name, e in expected.items():
        g = got[name]
        assert (g.shape, g.dtype, g.device.type) == (e.shape, e.dtype, "cpu"), name
        if e.numel() == 1 or bool((e == e.flatten()[0]).all()):
            torch.testing.assert_close(g, e, rtol=0, atol=0, msg=name)  # zeros, ones, constants
        elif e.numel() >= 64:
            n, std = e.numel(), e.float().std().item()
            # six standard errors of the sample std and mean of n draws
            assert abs(g.float().std().item() - std) <= 6 * std / math.sqrt(2 * n), name
            assert abs(g.float().mean().item() - e.float().mean().item()) <= 6 * std / math.sqrt(n), name


@pytest.mark.parametrize("family", attnlab.list_models())
def test_materialised_model_is_initialised_like_an_eager_build(family):
    torch.manual_seed(0)
    eager = attnlab.create_model(family, "debug", **options(family))
    model = materialize(build_on_meta(family, "debug", **options(family)))
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert_same_initialisation(eager, model)
    # tied weights share one storage again, and the RoPE buffers are recomputed exactly
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    buffers = dict(eager.named_buffers())
    assert buffers and buffers.keys() == dict(model.named_buffers()).keys()
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    assert torch.isfinite(model(input_ids=ids, use_cache=False).logits).all()


def test_materialise_in_the_dtype_built_in():
    model = materialize(build_on_meta("gpt", "debug", dtype=torch.bfloat16))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.layers[0].ffn_norm.weight.eq(1).all()


def test_a_model_moved_to_meta_is_initialised_again():
    """An eager build marks its modules initialised; materialising must not take that for the new storage."""
    eager = attnlab.create_model("gpt", "debug")
    model = materialize(attnlab.create_model("gpt", "debug").to("meta"))
    assert_same_initialisation(eager, model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
