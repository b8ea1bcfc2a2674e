"""Activation checkpointing: the same gradients as without it, for every family, with LSW's memory carried and
MoA's TI penalty on; HF's switches and Trainer; ``attnlab train`` and ``attnlab bench`` with the option."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

import attnlab
from attnlab.bench.runner import BenchConfig, run_bench
from attnlab.errors import ConfigError
from attnlab.layers.lsw_attention import XLMemory
from attnlab.layers.metric_attention import MetricAttention
from attnlab.models.checkpointing import MODES, checkpointed_blocks, enable_activation_checkpointing
from attnlab.models.skeleton import causal_lm_loss
from attnlab.training.config import ACTIVATION_CHECKPOINTING, TrainConfig

# Every family at its debug size, in fp64 without dropout, with what it shares or carries switched on.
FEATURES = {
    "dat": {"n_heads_ra": 2, "symbol_retrieval": "symbolic_attention"},  # one retriever shared by all layers
    "lsw": {"simctg_weight": 0.5, "n_registers": 2, "mem_len": 8},
    "moa": {"ti_reg_weight": 0.5, "ti_reg_samples": 16},
}


def make_model(family: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"dropout": 0.0, **FEATURES.get(family, {}), **overrides}
    return attnlab.create_model(family, "debug", **options).double().train()


def tokens(model: torch.nn.Module, batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for name, gradient in expected.items():
        torch.testing.assert_close(got[name], gradient, rtol=1e-10, atol=1e-12, msg=name)


def count_block_runs(model: torch.nn.Module) -> list[int]:
    """A list that counts how often each block runs (a forward pre-hook: it also sees recomputations)."""
    runs = [0] * len(model.model.layers)
    for index, block in enumerate(model.model.layers):
        block.register_forward_pre_hook(lambda *_, i=index: runs.__setitem__(i, runs[i] + 1))
    return runs


def step(model: torch.nn.Module, ids: torch.Tensor, **kwargs):
    """One forward and backward with a fixed random state (MoA's TI triples come from it)."""
    torch.manual_seed(5)
    out = model(input_ids=ids, labels=ids, **{"use_cache": False, **kwargs})
    out.loss.backward()
    return out


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("family", attnlab.list_models())
def test_gradients_equal_the_model_without_checkpointing(family, mode):
    plain, checkpointed = make_model(family), make_model(family)
    enable_activation_checkpointing(checkpointed, mode)
    runs = count_block_runs(checkpointed)
    ids = tokens(plain)
    expected, got = step(plain, ids), step(checkpointed, ids)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-12)
    assert_same_gradients(gradients(plain), gradients(checkpointed))
    marked = checkpointed_blocks(checkpointed)
    assert marked == [mode == "full" or i % 2 == 0 for i in range(len(marked))]
    assert runs == [2 if m else 1 for m in marked]  # each checkpointed block ran again in the backward


def test_moa_ti_penalty_is_counted_once():
    plain, checkpointed = make_model("moa"), make_model("moa")
    enable_activation_checkpointing(checkpointed, "full")
    ids = tokens(plain)
    expected = step(plain, ids)
    torch.manual_seed(5)
    got = checkpointed(input_ids=ids, labels=ids, use_cache=False)
    heads = [m for m in checkpointed.modules() if isinstance(m, MetricAttention)]
    published = [m.ti_penalty for m in heads]
    penalty = checkpointed.ti_penalty()
    got.loss.backward()
    assert len(heads) == 2 * checkpointed.config.n_layers  # the MHA and MQA metric heads of every layer
    assert penalty.item() > 0 and penalty.item() == pytest.approx(plain.ti_penalty().item(), rel=1e-12)
    # The loss holds the penalty once, weighted; the recomputation left each head's as the forward set it.
    lm_loss = causal_lm_loss(got.logits, ids)
    assert got.loss.item() == pytest.approx(lm_loss.item() + 0.5 * penalty.item(), rel=1e-12)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-12)
    assert all(m.ti_penalty is tensor for m, tensor in zip(heads, published))
    assert_same_gradients(gradients(plain), gradients(checkpointed))


def lsw_segments(model: torch.nn.Module, memory: XLMemory, backward_each: bool) -> list[float]:
    """Two consecutive segments with the memory carried; backward after each, or once over both losses."""
    losses = []
    for seed in (1, 2):
        ids = tokens(model, length=8, seed=seed)
        loss = model(input_ids=ids, labels=ids, cache=memory, use_cache=True).loss
        losses.append(loss)
        if backward_each:
            loss.backward()
    if not backward_each:
        sum(losses).backward()
    return [loss.item() for loss in losses]


def memory_state(memory: XLMemory) -> dict:
    return {"seen": memory.seen, "valid": memory.valid, "positions": memory.positions, "docs": memory.docs,
            "keys": memory.keys, "values": memory.values}


@pytest.mark.parametrize("backward_each", [True, False], ids=["backward-per-segment", "one-backward"])
def test_lsw_memory_carried_across_segments(backward_each):
    plain, checkpointed = make_model("lsw"), make_model("lsw")
    enable_activation_checkpointing(checkpointed, "full")
    runs = count_block_runs(checkpointed)
    plain_memory, memory = plain.make_cache(), checkpointed.make_cache()
    expected = lsw_segments(plain, plain_memory, backward_each)
    got = lsw_segments(checkpointed, memory, backward_each)
    assert got == pytest.approx(expected, rel=1e-12)
    assert_same_gradients(gradients(plain), gradients(checkpointed))
    assert runs == [4] * len(runs)  # two segments, each block recomputed in each one's backward
    # Memory holds each segment's 8 tokens once: the recomputations stored nothing twice.
    assert memory.seen == 16 and memory.keys[0].shape[2] == checkpointed.config.mem_len == 8
    torch.testing.assert_close(memory_state(memory), memory_state(plain_memory), rtol=1e-12, atol=0)


def test_a_cache_other_families_write_turns_recomputation_off():
    """GPT writes its KV cache in place: a training forward with a cache keeps its blocks' activations."""
    plain, checkpointed = make_model("gpt"), make_model("gpt")
    enable_activation_checkpointing(checkpointed, "full")
    runs = count_block_runs(checkpointed)
    ids = tokens(plain)
    plain_cache, cache = plain.make_cache(), checkpointed.make_cache()
    expected = step(plain, ids, cache=plain_cache, use_cache=True)
    got = step(checkpointed, ids, cache=cache, use_cache=True)
    assert runs == [1] * len(runs)
    assert cache.get_seq_length() == plain_cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(cache.layers[0].keys, plain_cache.layers[0].keys, rtol=1e-12, atol=0)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-12)
    assert_same_gradients(gradients(plain), gradients(checkpointed))


def test_no_recomputation_without_a_backward():
    model = make_model("gpt")
    enable_activation_checkpointing(model, "full")
    runs = count_block_runs(model)
    with torch.no_grad():
        model(input_ids=tokens(model), use_cache=False)
    model.eval()
    model(input_ids=tokens(model), use_cache=False).logits.sum().backward()
    assert runs == [2] * len(runs)  # one run each, in each forward


def test_hf_switches_mark_and_unmark_the_blocks():
    model = make_model("gpt", n_layers=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated names still work
        model.gradient_checkpointing_enable()
        assert checkpointed_blocks(model) == [True] * 4 and model.is_activation_checkpointing
        model.gradient_checkpointing_disable()
    assert checkpointed_blocks(model) == [False] * 4 and not model.is_activation_checkpointing
    model.activation_checkpointing_enable(every_n_layers=3)
    assert checkpointed_blocks(model) == [True, False, False, True]


def test_reentrant_checkpointing_is_refused():
    model = make_model("moa")
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})


def test_modes_are_one_list():
    assert ACTIVATION_CHECKPOINTING == MODES
    with pytest.raises(ConfigError, match="activation_checkpointing must be one of"):
        TrainConfig(activation_checkpointing="half")
    with pytest.raises(ConfigError, match="activation_checkpointing must be one of"):
        enable_activation_checkpointing(make_model("gpt"), "half")


class Motifs(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 16):
        generator = torch.Generator().manual_seed(0)
        self.items = torch.randint(0, 256, (n, 4), generator=generator).repeat(1, length // 4)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"input_ids": self.items[i], "labels": self.items[i]}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gradient_checkpointing is the deprecated alias
@pytest.mark.parametrize("family", attnlab.list_models())
def test_hf_trainer_with_gradient_checkpointing(family, tmp_path):
    torch.manual_seed(0)
    model = attnlab.create_model(family, "debug")
    runs = count_block_runs(model)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        gradient_checkpointing=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Motifs())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert checkpointed_blocks(model) == [True] * len(runs)
    assert runs == [6] * len(runs)  # 3 steps, each block run and recomputed


def train_args(data, run, *more: str) -> list[str]:
    return ["train", "--preset", "debug", "--data", str(data), "--out-dir", str(run), "--batch-size", "2",
            "--block-size", "16", "--max-steps", "3", "--warmup-steps", "1", "--eval-interval", "3",
            "--eval-tokens", "64", "--sample-tokens", "0", "--no-progress", "--no-tensorboard", *more]


@pytest.mark.parametrize("family", ["gpt", "lsw"])
def test_train_command_with_activation_checkpointing(family, tmp_path, run_cli):
    """The CLI flag trains; the weights equal a run without it (recomputation replays the random state)."""
    data = tmp_path / "ledger.txt"
    data.write_text("\n".join(f"entry {i:04d} of the ledger, paid" for i in range(300)) + "\n")
    extra = ["--model", family, "--set", "dropout=0.1"]
    if family == "lsw":
        extra += ["--segment-stream", "--set", "mem_len=16"]
    weights = {}
    for mode in ("none", "selective"):
        run = tmp_path / mode
        code, _, err = run_cli(*train_args(data, run, *extra, "--activation-checkpointing", mode))
        assert code == 0, err
        assert json.loads((run / "train_config.json").read_text())["activation_checkpointing"] == mode
        weights[mode] = load_file(run / "model.safetensors")
    assert weights["none"].keys() == weights["selective"].keys()
    for name, tensor in weights["none"].items():
        torch.testing.assert_close(weights["selective"][name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def bench_rows(**options) -> list[dict]:
    values = {"models": ["gpt:debug"], "match": "none", "parts": ["train"], "seq_lens": [128], "batch_size": 2,
              "warmup": 0, "repeats": 1, "plots": False, "progress": False, "device": "cpu", "gemm_size": 64}
    return run_bench(BenchConfig(**{**values, **options})).rows


def test_bench_records_the_mode_and_measures_less_memory():
    plain, = bench_rows()
    full, = bench_rows(activation_checkpointing="full")
    assert plain["status"] == full["status"] == "ok"
    assert (plain["activation_checkpointing"], full["activation_checkpointing"]) == ("none", "full")
    assert full["peak_mem_bytes"] < plain["peak_mem_bytes"]
    assert full["flops"] > plain["flops"]  # the recomputed forward


def test_bench_model_entries_choose_their_own_mode():
    models = [{"label": "plain", "model": "gpt", "preset": "debug"},
              {"label": "selective", "model": "gpt", "preset": "debug",
               "activation_checkpointing": "selective"}]
    rows = bench_rows(models=models, seq_lens=[64])
    assert [(r["model"], r["activation_checkpointing"]) for r in rows] == [("plain", "none"),
                                                                           ("selective", "selective")]
    with pytest.raises(ConfigError, match="activation_checkpointing must be one of"):
        bench_rows(models=[{**models[1], "activation_checkpointing": "all"}])
