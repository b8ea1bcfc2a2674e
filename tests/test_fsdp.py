"""FSDP2 training (`attnlab train --parallel fsdp`): 2 gloo processes train like one process on the same global
batch, a stopped run resumes to the same losses on 2 processes and on 1 (DCP resharding, LSW memories regrouped),
the gathered HF model and `attnlab export` of the sharded checkpoint load with the same logits, the meta route
draws the same weights on any number of processes, bf16 / CPU offload / activation checkpointing / Sophia work on
sharded parameters, and what cannot work is refused in one line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import attnlab
from attnlab.export import export_run
from attnlab.training import TrainConfig, train

WORDS = "the king queen sword crown night day love death time rose fair sweet".split()
STEPS, STOP = 5, 3
# Families whose debug preset draws random numbers in training (LEAP's dropout, MoA's sampled triangle-inequality
# triples) draw them per process, as under DDP; they are switched off to compare 2 processes with 1.
DETERMINISTIC = {"leap": {"dropout": 0.0}, "moa": {"ti_reg_weight": 0.0}}
MODELS = {
    "gpt": dict(model="gpt"),
    "dat": dict(model="dat"),
    "leap": dict(model="leap", model_overrides=DETERMINISTIC["leap"]),
    "lsw-xl": dict(model="lsw", segment_stream=True),  # XL memory carried per process's streams
    "moa": dict(model="moa", model_overrides=DETERMINISTIC["moa"]),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (5,), generator=g).tolist()) + ","
             for _ in range(1200)]
    path = tmp_path_factory.mktemp("corpus") / "verse.txt"
    path.write_text("\n".join(lines))
    return path


def options(corpus: Path, out_dir: Path, **overrides) -> dict:
    """Sharded and unsharded training are compared in fp32 (``dtype: auto`` would pick bf16 autocast on a
    CPU with native bf16, whose per-process matmuls round differently)."""
    values = dict(model="gpt", preset="debug", data=str(corpus), batch_size=4, block_size=32, max_steps=STEPS,
                  warmup_steps=1, eval_interval=STEPS, eval_tokens=512, log_interval=1, sample_tokens=0,
                  out_dir=str(out_dir), progress=False, tensorboard=False, device="cpu", seed=5, dtype="float32")
    values.update(overrides)
    return values


def flags(values: dict) -> list[str]:
    """TrainConfig values as `attnlab train` flags."""
    args = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if key == "model_overrides":
            args += [a for k, v in value.items() for a in ("--set", f"{k}={v}")]
        elif value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Several `attnlab train` invocations in the same torchrun processes (their start, not the training, is what
# costs seconds on 2 cores): the process group is made once, and each run uses it and leaves it.
WORKER = """
import json, sys
import torch.distributed as dist
from attnlab.cli import main
dist.init_process_group("gloo")
for args in json.loads(sys.argv[1]):
    if main(["train", *args]):
        sys.exit(1)
dist.destroy_process_group()
"""


def torchrun(*runs: dict, nproc: int = 2) -> None:
    """`torchrun --nproc_per_node N -m attnlab train ...` on the CPU (gloo), one thread per process; several runs
    one after the other in the same processes."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
              str(free_port())]
    if len(runs) == 1:
        cmd = [*launch, "-m", "attnlab", "train", *flags(runs[0])]
    else:
        worker = Path(runs[0]["out_dir"]).parent / "worker.py"
        worker.write_text(WORKER)
        cmd = [*launch, str(worker), json.dumps([flags(values) for values in runs])]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_close_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=atol, msg=key)


def assert_same_losses(a: dict[int, float], b: dict[int, float], steps) -> None:
    for step in steps:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), (step, a, b)


def logits(model, vocab: int = 257) -> torch.Tensor:
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(input_ids=ids, use_cache=False).logits


# ------------------------------------------------------------------------------- 2 processes vs 1
def check_family(name: str, corpus: Path, tmp_path: Path, *also: dict) -> None:
    """2 FSDP processes (2 rows each) stopped at step 3 and resumed on 2 and, from a copy, on 1 process (4 rows):
    the same losses, step by step, as one plain process of 4 rows; the same model at the end. ``also``: more
    runs for the same torchrun processes."""
    model = MODELS[name]
    stopped, resharded, single = tmp_path / "fsdp2", tmp_path / "fsdp2-to-1", tmp_path / "single"
    torchrun(options(corpus, stopped, batch_size=2, parallel="fsdp", stop_at_step=STOP, **model),
             options(corpus, stopped, batch_size=2, resume=True, **model),  # --parallel fsdp: the run's config
             *also)
    stop_checkpoint = stopped / "checkpoints/step-0000003"
    assert (stop_checkpoint / "dcp/.metadata").is_file()
    assert {p.name for p in stop_checkpoint.glob("rng.rank*.pt")} == {"rng.rank0.pt", "rng.rank1.pt"}
    # the copy of the run as it stood at the stop, resumed on 1 process (DCP reshards 2 → 1)
    shutil.copytree(stopped, resharded, ignore=shutil.ignore_patterns("step-0000005"))
    (resharded / "checkpoints/latest.json").write_text(json.dumps({"step": STOP, "path": stop_checkpoint.name}))
    train(TrainConfig(**options(corpus, resharded, batch_size=4, resume=True, parallel="fsdp", **model)))
    train(TrainConfig(**options(corpus, single, **model)))
    info = json.loads((stopped / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["parallel"] == "fsdp, meta init"  # the resume's route: meta
    reference = losses(single)
    assert_same_losses(losses(stopped), reference, range(1, STEPS + 1))
    assert_same_losses(losses(resharded), reference, range(STOP + 1, STEPS + 1))
    assert_close_weights(stopped, single)
    assert_close_weights(resharded, single)


def test_gpt_two_processes_train_like_one_resume_and_reshard_to_one(corpus, tmp_path):
    straight, meta_two, meta_one = tmp_path / "straight", tmp_path / "meta-two", tmp_path / "meta-one"
    check_family("gpt", corpus, tmp_path,
                 options(corpus, straight, batch_size=2, parallel="fsdp", sample_tokens=8),
                 options(corpus, meta_two, batch_size=2, parallel="fsdp", fsdp_init="meta", max_steps=3))
    # stopping and resuming changes nothing at all on the same number of processes (nor does sampling, which
    # every process does in step: generate(synced_gpus=True))
    assert (straight / "samples.txt").read_text().startswith("===== step 5 =====")
    a, b = weights(straight), weights(tmp_path / "fsdp2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(straight) == losses(tmp_path / "fsdp2")
    # the meta route draws the same weights on 2 processes as on 1: the same training
    train(TrainConfig(**options(corpus, meta_one, parallel="fsdp", fsdp_init="meta", max_steps=3)))
    assert json.loads((meta_two / "run_info.json").read_text())["parallel"] == "fsdp, meta init"
    assert_same_losses(losses(meta_two), losses(meta_one), range(1, 4))
    assert_close_weights(meta_two, meta_one)
    assert losses(meta_one)[1] != losses(straight)[1]  # other values than the seeded build (same distributions)
    # the gathered HF model at the root is the run's model; export converts the sharded checkpoint into the same
    run = tmp_path / "fsdp2"
    gathered = attnlab.load(run)
    export_run(run, tmp_path / "exported")

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported", trust_remote_code=True)
    single = attnlab.load(tmp_path / "single")
    torch.testing.assert_close(logits(exported), logits(gathered), rtol=0, atol=0)
    torch.testing.assert_close(logits(exported), logits(single), rtol=1e-4, atol=1e-4)
    # a run killed before it wrote its HF model: export reads the checkpoint alone
    for name in ("model.safetensors", "config.json"):
        (run / name).unlink()
    export_run(run, tmp_path / "exported-again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "exported-again", trust_remote_code=True)
    torch.testing.assert_close(logits(again), logits(gathered), rtol=0, atol=0)


def test_lsw_with_xl_memory_regroups_the_streams_memories_on_one_process(corpus, tmp_path):
    """Each process carries its own rows' memories; resumed on 1 process, they are put together by rows."""
    check_family("lsw-xl", corpus, tmp_path)
    memories = torch.load(tmp_path / "fsdp2-to-1/checkpoints/step-0000005/memories.rank0.pt", weights_only=True)
    assert memories[0]["valid"].shape[0] == 4  # one process now holds the 4 rows two held


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dat", "leap", "moa"])
def test_other_families_two_processes_train_like_one(name, corpus, tmp_path):
    check_family(name, corpus, tmp_path)


@pytest.mark.parametrize("name", MODELS)
def test_every_family_sharded_on_one_process_trains_like_the_plain_model(name, corpus, tmp_path):
    """FSDP units around every family's blocks, recomputed by activation checkpointing inside them (the
    MixerContext handed past FSDP's hook, its ``once`` intact), in-process; the 2-process tests run without."""
    same = dict(max_steps=3, activation_checkpointing="full", **MODELS[name])
    fsdp = train(TrainConfig(**options(corpus, tmp_path / "fsdp", parallel="fsdp", **same)))
    plain = train(TrainConfig(**options(corpus, tmp_path / "plain", **same)))
    assert_same_losses(losses(tmp_path / "fsdp"), losses(tmp_path / "plain"), range(1, 4))
    assert fsdp.val["bpb"] == pytest.approx(plain.val["bpb"], rel=1e-5)


# ------------------------------------------------------------------------------- options on sharded parameters
def test_activation_checkpointing_and_sophia_on_sharded_parameters(corpus, tmp_path):
    """Sophia's Hessian refresh and gradient clipping on DTensor parameters; recomputed blocks in FSDP units."""
    same = dict(optimizer="sophia", hessian_interval=2, activation_checkpointing="full", grad_clip=0.5)
    train(TrainConfig(**options(corpus, tmp_path / "fsdp", parallel="fsdp", **same)))
    train(TrainConfig(**options(corpus, tmp_path / "plain", **same)))
    assert_same_losses(losses(tmp_path / "fsdp"), losses(tmp_path / "plain"), range(1, STEPS + 1))
    assert_close_weights(tmp_path / "fsdp", tmp_path / "plain")


def test_bf16_mixed_precision_and_cpu_offload_train_close_to_fp32(corpus, tmp_path):
    train(TrainConfig(**options(corpus, tmp_path / "bf16", parallel="fsdp", fsdp_mixed_precision="bf16",
                                fsdp_cpu_offload=True)))
    train(TrainConfig(**options(corpus, tmp_path / "fp32")))
    bf16, fp32 = losses(tmp_path / "bf16"), losses(tmp_path / "fp32")
    for step in range(1, STEPS + 1):
        assert bf16[step] == pytest.approx(fp32[step], rel=2e-3), step
    assert {t.dtype for t in weights(tmp_path / "bf16").values()} == {torch.float32}  # fp32 master weights


# ------------------------------------------------------------------------------- sharded checkpoints
def test_a_damaged_sharded_checkpoint_falls_back_to_the_previous_one(corpus, tmp_path, capsys):
    run, straight = tmp_path / "run", tmp_path / "straight"
    train(TrainConfig(**options(corpus, run, parallel="fsdp", max_steps=6, stop_at_step=4,
                                checkpoint_interval=2)))
    shard = run / "checkpoints/step-0000004/dcp/__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    train(TrainConfig(**options(corpus, run, parallel="fsdp", max_steps=6, checkpoint_interval=2, resume=True)))
    assert "checkpoint step-0000004 is damaged (dcp/__0_0.distcp:" in " ".join(capsys.readouterr().err.split())
    assert (run / "checkpoints/damaged-step-0000004").is_dir()
    train(TrainConfig(**options(corpus, straight, parallel="fsdp", max_steps=6, checkpoint_interval=2)))
    a, b = weights(run), weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_checkpoint_index_is_read_without_unpickling_objects(tmp_path):
    from attnlab.training.checkpoint import _MetadataUnpickler

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo should never run",))

    with open(tmp_path / ".metadata", "wb") as f:
        pickle.dump(Payload(), f)
    with open(tmp_path / ".metadata", "rb") as f, pytest.raises(pickle.UnpicklingError, match="system"):
        _MetadataUnpickler(f).load()


# ------------------------------------------------------------------------------- what is refused
@pytest.mark.parametrize("values, message", [
    (dict(parallel="fsdp", compile=True), "compile with parallel fsdp is not supported"),
    (dict(parallel="fsdp", init_from="runs/x", lora_r=4), "parallel fsdp does not shard LoRA runs"),
    (dict(parallel="fsdp", fsdp_init="meta", warm_start="gpt2"), "fsdp_init meta draws fresh weights"),
    (dict(fsdp_mixed_precision="bf16"), "fsdp_mixed_precision needs parallel fsdp"),
    (dict(fsdp_cpu_offload=True, fsdp_init="meta"), "fsdp_cpu_offload, fsdp_init need parallel fsdp"),
    (dict(parallel="zero3"), "parallel must be one of"),
    (dict(parallel="fsdp", fsdp_mixed_precision="fp16"), "fsdp_mixed_precision must be one of"),
])
def test_options_fsdp_cannot_honour_are_refused(values, message):
    with pytest.raises(attnlab.ConfigError, match=message):
        TrainConfig(**values)


def test_a_checkpoint_resumes_only_with_the_parallel_mode_that_wrote_it(corpus, tmp_path):
    train(TrainConfig(**options(corpus, tmp_path / "plain", max_steps=2)))
    with pytest.raises(attnlab.ConfigError, match="written without FSDP; resume it with --parallel ddp"):
        train(TrainConfig(**options(corpus, tmp_path / "plain", max_steps=2, resume=True, parallel="fsdp")))
    train(TrainConfig(**options(corpus, tmp_path / "sharded", max_steps=2, parallel="fsdp")))
    with pytest.raises(attnlab.ConfigError, match="written by an FSDP run .sharded.; resume it with --parallel"):
        train(TrainConfig(**options(corpus, tmp_path / "sharded", max_steps=2, resume=True)))


# ------------------------------------------------------------------------------- docs/scaling.md's memory plan
def test_the_memory_plan_adds_up_and_the_docs_table_is_current():
    from attnlab.training import memory_plan as plan

    gpt2 = plan.shape_of("gpt:medium")  # GPT-2 small, counted by hand
    d, layers, vocab, positions = 768, 12, 50257, 1024
    block = 12 * d * d + 13 * d  # qkv + out (4d² + 4d), MLP (8d² + 5d), two LayerNorms (4d)
    root = vocab * d + positions * d + 2 * d  # tied embedding / head, positions, final LayerNorm
    assert (gpt2.block_parameters, gpt2.root_parameters) == (block, root)
    assert gpt2.parameters == layers * block + root == 124_439_808
    tokens = 1024
    assert plan.activation_bytes(gpt2) == layers * 34 * tokens * d + 8 * tokens * vocab
    assert plan.activation_bytes(gpt2, checkpointing="full") == layers * 2 * tokens * d + 34 * tokens * d + \
        8 * tokens * vocab
    assert plan.per_gpu_bytes(gpt2) == 16 * gpt2.parameters + plan.activation_bytes(gpt2)
    sharded = plan.per_gpu_bytes(gpt2, ranks=8, fsdp=True)
    assert sharded == 2 * gpt2.parameters + root * 6 + block * 8 + plan.activation_bytes(gpt2)
    xxl = plan.shape_of("lsw:xxl")
    assert xxl.parameters == 12_931_772_416 and plan.model_state_bytes(xxl) == 16 * 12_931_772_416
    assert plan.per_gpu_bytes(xxl, ranks=8, fsdp=True, checkpointing="full") < plan.model_state_bytes(xxl) / 6
    page = Path(__file__).parents[1] / "docs" / "scaling.md"
    text = page.read_text()
    assert f"{plan.BEGIN}\n{plan.table()}\n{plan.END}" in text, (
        "the memory table is stale: python -m attnlab.training.memory_plan --write docs/scaling.md")


def test_sigterm_writes_the_sharded_checkpoint_and_the_resume_loses_no_step(corpus, tmp_path, monkeypatch):
    """The preemption path under FSDP: the step finishes, the sharded checkpoint is written (no gathered model:
    the grace period is short), and the resume ends where an uninterrupted run ends, bit for bit."""
    import signal

    from attnlab.training.trainer import Trainer

    real_step = Trainer._train_step

    def step_and_signal(self, step):
        loss = real_step(self, step)
        if step == 1 and "stopped" in str(self.run_dir):
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "_train_step", step_and_signal)
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    with pytest.raises(attnlab.TrainingInterrupted) as interrupted:
        train(TrainConfig(**options(corpus, stopped, parallel="fsdp", checkpoint_interval=100)))
    assert (interrupted.value.step, interrupted.value.exit_code) == (2, 143)
    assert (stopped / "checkpoints/step-0000002/dcp/.metadata").is_file()
    assert not (stopped / "model.safetensors").exists()
    train(TrainConfig(**options(corpus, stopped, parallel="fsdp", checkpoint_interval=100, resume=True)))
    train(TrainConfig(**options(corpus, straight, parallel="fsdp", checkpoint_interval=100)))
    a, b = weights(straight), weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_sharded_write_leaves_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    import errno

    from attnlab.training import checkpoint

    real_write = checkpoint._write_file

    def full_disk_at_step_4(path, fill):
        if "step-0000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, fill)

    monkeypatch.setattr(checkpoint, "_write_file", full_disk_at_step_4)
    run = tmp_path / "run"
    expected = (r"cannot write checkpoint step-0000004 .*No space left on device.*the previous checkpoint "
                r"\(step-0000002\) and latest.json are untouched")
    with pytest.raises(attnlab.WriteError, match=expected):
        train(TrainConfig(**options(corpus, run, parallel="fsdp", checkpoint_interval=2)))
    assert json.loads((run / "checkpoints/latest.json").read_text())["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-0000002"]
