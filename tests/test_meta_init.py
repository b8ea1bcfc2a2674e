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


# ------------------------------------------------------------------------------- sharded (FSDP) materialisation
@pytest.fixture(scope="module")
def one_process_group():
    """A process group of this one process, as `attnlab train --parallel fsdp` makes without torchrun."""
    import torch.distributed as dist

    from attnlab.training.distributed import init_distributed, shutdown

    info = init_distributed(single_process_group=True)
    assert dist.is_initialized() and dist.get_world_size() == 1
    yield
    shutdown(info)


def sharded_on_meta(family: str, preset: str, **kwargs) -> torch.nn.Module:
    from attnlab.training.fsdp import shard

    model = build_on_meta(family, preset, **kwargs)
    return shard(model, torch.device("cpu"))


def gathered(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from attnlab.training.fsdp import full_state_dict

    return full_state_dict(model)


@pytest.mark.parametrize("family", attnlab.list_models())
def test_sharded_shards_are_initialised_like_an_eager_build(family, one_process_group):
    from attnlab.models.meta_init import assemble_model, materialize_sharded

    torch.manual_seed(0)
    eager = attnlab.create_model(family, "debug", **options(family))
    model = materialize_sharded(sharded_on_meta(family, "debug", **options(family)), "cpu", seed=3)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, sharded
    weights = gathered(model)
    plain = assemble_model(type(eager), eager.config, weights)
    assert_same_initialisation(eager, plain)
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    for name, buffer in eager.named_buffers():  # computed, not saved: RoPE's inv_freq
        assert torch.equal(dict(model.named_buffers())[name], buffer), name
        assert torch.equal(dict(plain.named_buffers())[name], buffer), name
    ids = torch.randint(0, plain.config.vocab_size, (2, 8))
    torch.testing.assert_close(model.eval()(input_ids=ids, use_cache=False).logits,  # eval: LEAP's dropout
                               plain.eval()(input_ids=ids, use_cache=False).logits)
    # deterministic: the seed and the module names decide, not the order or the number of processes
    again = gathered(materialize_sharded(sharded_on_meta(family, "debug", **options(family)), "cpu", seed=3))
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_a_module_that_init_weights_leaves_unset_is_named(one_process_group):
    from attnlab.models.meta_init import materialize_sharded

    model = sharded_on_meta("gpt", "debug")
    model.model.layers[0].mixer.register_parameter("extra", torch.nn.Parameter(torch.empty(4, device="meta")))
    with pytest.raises(RuntimeError, match=r"model.layers.0.mixer.extra is not initialised by GPTForCausalLM"):
        materialize_sharded(model, "cpu", seed=0)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
def test_a_13b_preset_is_sharded_on_meta_and_materialised_a_block_at_a_time(one_process_group):
    """lsw:xxl (52 GB in fp32) built on meta and sharded per block: no memory. Materialising one block (what a
    process allocates for its shard of it, here a process holding all of it) costs that block, not the model."""
    from attnlab.models.meta_init import materialize_sharded

    before = resident_bytes()
    model = sharded_on_meta("lsw", "xxl", dtype=torch.bfloat16)
    sharded = resident_bytes() - before
    total = sum(p.numel() for p in model.parameters())
    assert total > 12.9e9
    assert sharded < 1 * GiB, f"sharding on meta grew the resident size by {sharded / GiB:.2f} GiB"
    block = model.model.layers[0]
    block_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
    materialize_sharded(model, "cpu", seed=0, modules=[block])
    grown = resident_bytes() - before
    assert not any(p.is_meta for p in block.parameters())
    assert all(p.is_meta for p in model.model.layers[1].parameters())
    # the block's bf16 storage, plus at most one of its modules drawn whole; 52 GB for the model
    assert grown < block_bytes + 2 * GiB, f"{grown / GiB:.2f} GiB for a block of {block_bytes / GiB:.2f} GiB"
    assert grown < total * 4 / 40
    std = block.mixer.qkv.weight.full_tensor().float().std().item()
    assert std == pytest.approx(model.config.initializer_range, rel=0.01)
