"""The attnlab trainer: schedule, parameter groups, learning, exact resume, accumulation and DDP."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import attnlab
from attnlab.training import TrainConfig, train
from attnlab.training.optim import lr_at, param_groups

WORDS = "the king queen sword crown night day love death time rose fair sweet".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~40 KB of pseudo-verse: enough structure to learn something in a few dozen steps."""
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(1200):
        idx = torch.randint(0, len(WORDS), (5,), generator=g).tolist()
        lines.append(" ".join(WORDS[i] for i in idx) + ",")
    path = tmp_path_factory.mktemp("corpus") / "verse.txt"
    path.write_text("\n".join(lines))
    return path


def config(corpus, out_dir, **overrides) -> TrainConfig:
    """fp32 unless a test asks otherwise: these tests compare runs that must compute the same numbers."""
    values = dict(dtype="float32", 
        model="gpt", preset="debug", data=str(corpus), batch_size=4, block_size=32, max_steps=8,
        warmup_steps=2, lr=3e-3, eval_interval=4, eval_tokens=1024, log_interval=2, sample_tokens=0,
        out_dir=str(out_dir), progress=False, tensorboard=False, seed=7,
    )
    values.update(overrides)
    return TrainConfig(**values)


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "model.safetensors"))


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    steps = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def test_default_warmup_fits_short_runs():
    assert TrainConfig(max_steps=20).warmup_steps == 2
    assert TrainConfig(max_steps=5000).warmup_steps == 100
    with pytest.raises(attnlab.ConfigError, match="warmup_steps must be in"):
        TrainConfig(max_steps=20, warmup_steps=50)


def test_weight_decay_only_on_matrices():
    model = attnlab.create_model("gpt", "debug", tie_word_embeddings=False)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(name.endswith("weight") for name in decayed)
    assert "model.embed_tokens.weight" not in decayed and "lm_head.weight" in decayed
    assert not any("norm" in name for name in decayed)
    with_embeddings = param_groups(model, 0.1, decay_embeddings=True)[0]
    assert len(with_embeddings["params"]) == len(decay["params"]) + 2  # token and position embeddings
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_training_learns_and_writes_a_complete_run(corpus, tmp_path):
    result = train(config(corpus, tmp_path / "run", max_steps=40, eval_interval=20, lr=1e-2))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in vals] == [20, 40]
    assert vals[-1]["val_bpb"] < min(4.0, vals[0]["val_bpb"])  # from 8 bits/byte (uniform) at init
    assert result.val["bpb"] == pytest.approx(vals[-1]["val_bpb"])
    assert math.isclose(vals[-1]["val_ppl"], math.exp(vals[-1]["val_loss"]), rel_tol=1e-9)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_config.json", "run_info.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 40
    model = attnlab.load(run)
    assert model.config.vocab_size == 257  # 256 bytes + <|endoftext|>


def test_resume_after_stop_is_bit_exact(corpus, tmp_path):
    straight = train(config(corpus, tmp_path / "a", checkpoint_interval=2))
    train(config(corpus, tmp_path / "b", checkpoint_interval=2, stop_at_step=3))
    assert json.loads((tmp_path / "b/checkpoints/latest.json").read_text())["step"] == 3
    resumed = train(config(corpus, tmp_path / "b", checkpoint_interval=2, resume=True))
    assert resumed.step == straight.step == 8
    assert resumed.train_loss == straight.train_loss
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_runs_resume_exactly_too(corpus, tmp_path):
    overrides = dict(checkpoint_interval=2, model_overrides={"dropout": 0.2})
    train(config(corpus, tmp_path / "a", **overrides))
    train(config(corpus, tmp_path / "b", stop_at_step=5, **overrides))
    train(config(corpus, tmp_path / "b", resume=True, **overrides))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_process_resumes_to_the_same_model(corpus, tmp_path):
    """SIGKILL a real `attnlab train` process mid-run, resume it, compare with an uninterrupted run."""
    args = ["--model", "gpt", "--preset", "debug", "--data", str(corpus), "--batch-size", "4",
            "--block-size", "32", "--max-steps", "150", "--warmup-steps", "2", "--eval-interval", "1000",
            "--checkpoint-interval", "5", "--sample-tokens", "0", "--no-progress", "--no-tensorboard",
            "--seed", "3"]
    cmd = [sys.executable, "-m", "attnlab", "train", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*cmd, "--out-dir", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed/checkpoints/latest.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 10:
            break
        time.sleep(0.02)
    killed_at = json.loads(pointer.read_text())["step"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_at < 150, "the run finished before it could be killed"
    subprocess.run([*cmd, "--out-dir", str(tmp_path / "killed"), "--resume"], env=env, check=True,
                   capture_output=True)
    subprocess.run([*cmd, "--out-dir", str(tmp_path / "straight")], env=env, check=True, capture_output=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], "val_loss" in r) for r in records]
    assert keys == sorted(keys) and len(keys) == len(set(keys))  # no duplicate records after the resume


def test_gradient_accumulation_matches_a_large_batch(corpus, tmp_path):
    big = train(config(corpus, tmp_path / "big", batch_size=4, max_steps=4))
    small = train(config(corpus, tmp_path / "acc", batch_size=2, tokens_per_step=4 * 32, max_steps=4))
    assert small.tokens_seen == big.tokens_seen == 4 * 4 * 32
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains(corpus, tmp_path):
    result = train(config(corpus, tmp_path / "bf16", dtype="bfloat16", max_steps=4))
    assert math.isfinite(result.train_loss) and math.isfinite(result.val["bpb"])


@pytest.mark.parametrize("model", [["--model", "gpt"], ["--model", "lsw", "--segment-stream"]], ids=["gpt", "lsw-xl"])
def test_ddp_two_gloo_processes_match_one_process(corpus, tmp_path, model):
    """Each rank takes its own rows of the global batch (for LSW: its own streams and their XL memory)."""
    common = [*model, "--preset", "debug", "--data", str(corpus), "--block-size", "32",
              "--max-steps", "4", "--warmup-steps", "1", "--eval-interval", "4", "--eval-tokens", "512",
              "--sample-tokens", "0", "--no-progress", "--no-tensorboard", "--device", "cpu", "--seed", "5",
              "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29533", "-m", "attnlab", "train", *common, "--batch-size", "2",
                    "--out-dir", str(tmp_path / "ddp")], env=env, check=True, capture_output=True, timeout=180)
    subprocess.run([sys.executable, "-m", "attnlab", "train", *common, "--batch-size", "4",
                    "--out-dir", str(tmp_path / "single")], env=env, check=True, capture_output=True, timeout=180)
    info = json.loads((tmp_path / "ddp/run_info.json").read_text())
    assert info["world_size"] == 2 and info["tokens_per_step"] == 4 * 32
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", [{}, {"model": "lsw", "segment_stream": True}], ids=["gpt", "lsw-xl"])
def test_torch_compile_trains_to_the_same_loss(corpus, tmp_path, model):
    eager = train(config(corpus, tmp_path / "eager", max_steps=4, **model))
    compiled = train(config(corpus, tmp_path / "compiled", max_steps=4, compile=True, **model))
    assert compiled.train_loss == pytest.approx(eager.train_loss, rel=1e-4)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_at_the_step_boundary_and_resume_loses_no_step(corpus, tmp_path, run_cli, signum):
    """SIGTERM (what SLURM sends before killing a job) or SIGINT to a real `attnlab train`: it finishes the step,
    writes a checkpoint there and exits with 128 + the signal; the resume ends bit-identical to a straight run."""
    args = ["--model", "gpt", "--preset", "debug", "--data", str(corpus), "--batch-size", "4", "--block-size", "32",
            "--max-steps", "400", "--warmup-steps", "2", "--eval-interval", "1000", "--checkpoint-interval", "1000",
            "--log-interval", "1", "--sample-tokens", "0", "--no-progress", "--no-tensorboard", "--seed", "4"]
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    proc = subprocess.Popen([sys.executable, "-m", "attnlab", "train", *args, "--out-dir", str(stopped)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:  # the first step's log line: training runs, the handlers are installed
            if line.startswith("step"):
                break
        proc.send_signal(signum)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    step = json.loads((stopped / "checkpoints/latest.json").read_text())["step"]
    assert code == 128 + signum and 1 <= step < 400
    assert f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint saved" in rest
    logged = [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == step  # nothing trained after the checkpoint: the resume loses no step
    until = ["--stop-at-step", str(step + 3)]  # compared three steps on: the schedule is still the 400 steps'
    code, _, err = run_cli("train", *args, "--out-dir", str(stopped), "--resume", *until)
    assert code == 0, err
    assert run_cli("train", *args, "--out-dir", str(straight), *until)[0] == 0
    a, b = weights(straight), weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_python_api_raises_training_interrupted_after_the_checkpoint(corpus, tmp_path, monkeypatch):
    """In-process: a SIGTERM during step 3 stops after it, checkpointed; the handlers are put back afterwards."""
    from attnlab.training.trainer import Trainer

    real_step, before = Trainer._train_step, signal.getsignal(signal.SIGTERM)

    def step_and_signal(self, step):
        loss = real_step(self, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "_train_step", step_and_signal)
    with pytest.raises(attnlab.TrainingInterrupted) as stopped:
        train(config(corpus, tmp_path / "run", max_steps=8, checkpoint_interval=100))
    assert (stopped.value.step, stopped.value.exit_code, stopped.value.resumable) == (3, 143, True)
    assert json.loads((tmp_path / "run/checkpoints/latest.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before
