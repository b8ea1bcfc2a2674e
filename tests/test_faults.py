"""Fault injection: every file attnlab reads, damaged every way a disk, a kill or a person damages it, against
every command that reads it. The contract: a damaged file is reported in one line on stderr (exit 2) naming the
file, never a traceback; a damaged newest checkpoint is set aside and the run resumes from the previous one, to
bit-identical weights; a damaged token cache is rebuilt; a failed checkpoint write leaves the previous one.

One tiny run is trained per module (stopped at step 4 of 6, checkpoints at 2 and 4) and copied per case; the
commands run in-process through ``attnlab.cli.main`` (one subprocess test checks the real console script).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import attnlab
from attnlab.errors import AttnlabError, CorruptFileError, WriteError
from attnlab.training import TrainConfig, train

WORDS = ["the", "king", "queen", "sword", "crown", "night", "day", "love", "death", "time", "rose", "fair"]
OPTIONS = {"model": "gpt", "preset": "debug", "batch_size": 2, "block_size": 16, "max_steps": 6, "warmup_steps": 1,
           "eval_interval": 2, "eval_tokens": 64, "log_interval": 1, "sample_tokens": 0, "checkpoint_interval": 2,
           "progress": False, "tensorboard": False, "seed": 5}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The corpus, a run stopped at step 4 of 6 (checkpoints 2 and 4) and the same run trained straight to 6."""
    root = tmp_path_factory.mktemp("faults")
    corpus = root / "verse.txt"
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (5,), generator=g).tolist()) for _ in range(300)]
    corpus.write_text("\n".join(lines))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(root / "cache"))
        train(TrainConfig(data=str(corpus), out_dir=str(root / "stopped"), stop_at_step=4, **OPTIONS))
        train(TrainConfig(data=str(corpus), out_dir=str(root / "straight"), **OPTIONS))
    return {"corpus": corpus, "stopped": root / "stopped", "straight": root / "straight"}


@pytest.fixture
def run(runs, tmp_path) -> Path:
    """A private copy of the stopped run, to damage."""
    return Path(shutil.copytree(runs["stopped"], tmp_path / "run"))


@pytest.fixture
def cli(run_cli, monkeypatch):
    """``attnlab`` in-process; ``attnlab viz`` checks its runs and returns instead of serving."""
    monkeypatch.setattr("attnlab.viz.server.serve", lambda *args, **kwargs: None)
    return run_cli


# ------------------------------------------------------------------------------------------ damage
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def flip_bytes(path: Path) -> None:
    """Invert 8 bytes: at the start of a JSON file (its first brace), in the header of a safetensors file, in
    the middle of any other."""
    data = bytearray(path.read_bytes())
    at = 0 if path.suffix == ".json" else 12 if path.suffix == ".safetensors" and "checkpoints" not in str(path) \
        else len(data) // 2
    for i in range(at, min(at + 8, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_json(path: Path) -> None:
    path.write_text(json.dumps(["valid JSON", "but not what belongs here"]))


def missing(path: Path) -> None:
    path.unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {"truncate": truncate, "zero": zero_bytes, "flip": flip_bytes,
                                             "wrong-json": wrong_json, "missing": missing}


def edit_json(path: Path, **changes) -> None:
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


# ------------------------------------------------------------------------------------------ commands
def command(name: str, run: Path) -> list[str]:
    """The command line of each command the table runs against ``run``."""
    return {
        "eval": ["eval", str(run), "--json", "--no-progress"],
        "generate": ["generate", str(run), "--prompt", "the", "--max-new-tokens", "2", "--greedy"],
        "info": ["info", str(run), "--json"],
        "viz": ["viz", str(run), "--port", "0"],
        "resume": ["train", "--out-dir", str(run), "--resume", "--no-progress"],
    }[name]


def run_command(cli, name: str, run: Path) -> tuple[int, str, str]:
    """A CLI command, or ``attnlab.load`` / ``attnlab.load_tokenizer`` as (0, "", "") or (2, "", message)."""
    if name in ("load", "load_tokenizer"):
        try:
            getattr(attnlab, name)(run)
        except AttnlabError as exc:
            return 2, "", f"{type(exc).__name__}: {exc}\n"
        return 0, "", ""
    return cli(*command(name, run))


def assert_clear_error(code: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback, exactly one error line (the last line of stderr), containing each needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------------------------------ model files
READERS = ["eval", "generate", "info", "viz", "load"]


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip", "wrong-json", "missing"])
@pytest.mark.parametrize("reader", READERS)
def test_damaged_config_is_one_line_for_every_reader(run, cli, reader, damage):
    DAMAGE[damage](run / "config.json")
    code, _, err = run_command(cli, reader, run)
    line = assert_clear_error(code, err, "config.json")
    if damage != "missing":
        assert f"cp {run}/checkpoints/step-0000004/config.json" in line  # the fix: an intact copy to take


FOREIGN_CONFIGS = {
    "llama": ({"model_type": "llama", "hidden_size": 64}, None,
              ("unknown model_type 'llama': not an attnlab model (known: attnlab_dat, ", "attnlab_gpt, ")),
    "no-model-type": ({"d_model": 32}, None, "no model_type: not an attnlab model"),
    "unknown-attnlab-type": (None, {"model_type": "attnlab_nope"}, "unknown model_type 'attnlab_nope'"),
    "misspelt-field": (None, {"n_layer": 3}, "unknown field for a gpt config: n_layer (did you mean n_layers?)"),
    "bad-value": (None, {"d_model": "wide"}, "does not describe a valid gpt model (ConfigError: d_model must be"),
    "other-size": (None, {"d_model": 64}, "the weights do not fit config.json"),
}


@pytest.mark.parametrize("case", list(FOREIGN_CONFIGS))
@pytest.mark.parametrize("reader", READERS)
def test_foreign_or_wrong_config_is_named(run, cli, reader, case):
    """A config of another library, one without a model type, a misspelt field, an impossible value, or one
    that does not describe the weights beside it."""
    whole, changes, needle = FOREIGN_CONFIGS[case]
    if whole is not None:
        (run / "config.json").write_text(json.dumps(whole))
    else:
        edit_json(run / "config.json", **changes)
    code, _, err = run_command(cli, reader, run)
    assert_clear_error(code, err, *(needle if isinstance(needle, tuple) else (needle,)))


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip", "missing"])
@pytest.mark.parametrize("reader", READERS)
def test_damaged_weights_are_one_line_for_every_reader(run, cli, reader, damage):
    DAMAGE[damage](run / "model.safetensors")
    code, _, err = run_command(cli, reader, run)
    if reader == "info" and damage == "missing":
        assert code == 0, err  # a config alone describes the model: info needs no weights
        return
    assert_clear_error(code, err, "model.safetensors")


def test_the_fix_a_weights_error_gives_works(run, cli):
    truncate(run / "model.safetensors")
    code, _, err = cli(*command("generate", run))
    line = assert_clear_error(code, err, "truncated: the header describes more tensor data than the file's")
    source = line.split("cp ", 1)[1].split()[0]
    shutil.copy(source, run / "model.safetensors")
    assert cli(*command("generate", run))[0] == 0


def test_weights_of_another_model_are_named_with_what_differs(run, cli, tmp_path):
    other = attnlab.create_model("gpt", "debug", vocab_size=257, d_model=64)
    other.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", run / "model.safetensors")
    code, _, err = cli(*command("eval", run))
    assert_clear_error(code, err, "the weights do not fit config.json: 28 of another shape",
                       "(model.embed_positions.weight: [64, 64] stored, [16, 32] expected)")


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip", "wrong-json", "missing"])
@pytest.mark.parametrize("reader", ["eval", "generate", "viz", "load_tokenizer", "resume"])
def test_damaged_tokenizer_is_one_line(run, cli, reader, damage):
    DAMAGE[damage](run / "tokenizer.json")
    code, _, err = run_command(cli, reader, run)
    if reader == "resume" and damage == "missing":
        assert code == 0, err  # without its saved tokenizer a resume builds the run's --tokenizer (byte) again
        return
    assert_clear_error(code, err, "tokenizer")


def test_tokenizer_of_another_model_is_refused(run, cli, tmp_path):
    from tokenizers import Tokenizer, models

    big = {f"t{i}": i for i in range(400)}
    Tokenizer(models.WordLevel(vocab=big, unk_token="t0")).save(str(run / "tokenizer.json"))
    code, _, err = cli(*command("generate", run))
    assert_clear_error(code, err, "has 400 text tokens, more than the model's vocab_size 257")


def test_run_directory_that_is_missing_or_a_file(cli, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    for reader in READERS:
        for target in (tmp_path / "nowhere", tmp_path / "file"):
            code, _, err = run_command(cli, reader, target)
            assert_clear_error(code, err, str(target))


# ------------------------------------------------------------------------------------------ run files
@pytest.mark.parametrize("damage", ["truncate", "zero", "flip", "wrong-json", "missing"])
@pytest.mark.parametrize("reader", ["resume", "eval"])
def test_damaged_train_config(run, cli, reader, damage):
    DAMAGE[damage](run / "train_config.json")
    code, _, err = run_command(cli, reader, run)
    assert_clear_error(code, err, "train_config.json")


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing"])
def test_root_config_damage_does_not_stop_a_resume(runs, run, cli, damage):
    """A resume rebuilds the model from its checkpoint's own config.json, and writes the root's anew."""
    DAMAGE[damage](run / "config.json")
    code, _, err = cli(*command("resume", run))
    assert code == 0, err
    assert same_weights(run, runs["straight"]) and attnlab.load(run).config.n_layers == 2


def test_damaged_metrics_lines_are_dropped_not_fatal(runs, run, cli):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a line cut by a kill mid-write
    code, _, err = cli(*command("resume", run))
    assert code == 0 and "dropped 1 damaged line" in err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


def test_out_dir_naming_a_file(cli, runs, tmp_path):
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "run"):
        code, _, err = cli("train", "--data", str(runs["corpus"]), "--preset", "debug", "--out-dir", str(out),
                           "--no-progress")
        assert_clear_error(code, err, f"{tmp_path / 'taken'} is a file, not a directory")


def test_read_only_run_directory(run, cli, monkeypatch):
    """chmod is what a user does; as root (who may write anyway) the refusal is simulated where files open."""
    os.chmod(run, 0o555)
    try:
        if os.access(run, os.W_OK):
            monkeypatch.setattr("attnlab.training.trainer.os.access", lambda path, mode: Path(path) != run)
        code, _, err = cli(*command("resume", run))
    finally:
        os.chmod(run, 0o755)
    assert_clear_error(code, err, f"cannot write to {run} (permission denied)")


# ------------------------------------------------------------------------------------------ checkpoints
NEWEST = "checkpoints/step-0000004"


@pytest.mark.parametrize(("name", "damage"), [
    ("model.safetensors", "truncate"), ("model.safetensors", "flip"), ("optimizer.pt", "truncate"),
    ("optimizer.pt", "flip"), ("optimizer.pt", "missing"), ("rng.pt", "zero"), ("state.json", "wrong-json"),
    ("state.json", "flip"), ("config.json", "missing"), ("manifest.json", "truncate"), ("manifest.json", "missing"),
])
def test_damaged_newest_checkpoint_resumes_from_the_previous(runs, run, cli, name, damage):
    DAMAGE[damage](run / NEWEST / name)
    if name == "manifest.json" and damage == "missing":
        truncate(run / NEWEST / "optimizer.pt")  # without a manifest, the files must read
    code, _, err = cli(*command("resume", run))
    assert code == 0, err
    warning = " ".join(err.split())
    assert "checkpoint step-0000004 is damaged" in warning and "resuming from step-0000002 instead" in warning
    assert (run / "checkpoints/damaged-step-0000004").is_dir()  # set aside, never deleted
    assert same_weights(run, runs["straight"])  # bit-identical to the run that was never damaged


def test_both_checkpoints_damaged_is_one_line_and_moves_nothing(run, cli):
    truncate(run / NEWEST / "optimizer.pt")
    zero_bytes(run / "checkpoints/step-0000002/model.safetensors")
    code, _, err = cli(*command("resume", run))
    assert_clear_error(code, err, "no intact checkpoint to resume from", "step-0000004: optimizer.pt",
                       "step-0000002: model.safetensors: 0 bytes")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-0000002", "step-0000004"]


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip", "wrong-json", "missing"])
def test_damaged_latest_pointer_is_not_needed(runs, run, cli, damage):
    DAMAGE[damage](run / "checkpoints/latest.json")
    code, _, err = cli(*command("resume", run))
    assert code == 0, err
    assert same_weights(run, runs["straight"])


def test_checkpoints_from_before_manifests_resume(runs, run, cli):
    for step_dir in (run / "checkpoints").glob("step-*"):
        (step_dir / "manifest.json").unlink()
        (step_dir / "config.json").unlink()
    code, _, err = cli(*command("resume", run))
    assert code == 0, err
    assert same_weights(run, runs["straight"])


def test_manifest_lists_every_file_with_size_and_checksum(run):
    from attnlab.training.checkpoint import verify_checkpoint

    manifest = json.loads((run / NEWEST / "manifest.json").read_text())
    names = sorted(p.name for p in (run / NEWEST).iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == names == ["config.json", "model.safetensors", "optimizer.pt", "rng.pt",
                                                  "state.json"]
    assert all(entry["size"] == (run / NEWEST / n).stat().st_size for n, entry in manifest["files"].items())
    assert verify_checkpoint(run / NEWEST) is None
    flip_bytes(run / NEWEST / "rng.pt")
    assert verify_checkpoint(run / NEWEST) == "rng.pt: its bytes differ from the checksum written with it"


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(runs, run, cli, monkeypatch):
    from attnlab.training import checkpoint

    pointer = (run / "checkpoints/latest.json").read_bytes()
    real = checkpoint._write_file

    def disk_full(path, fill):
        if path.name == "optimizer.pt" and "step-0000006" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, fill)

    monkeypatch.setattr(checkpoint, "_write_file", disk_full)
    code, _, err = cli(*command("resume", run))
    assert_clear_error(code, err, "cannot write checkpoint step-0000006", "No space left on device",
                       "the previous checkpoint (step-0000004) and latest.json are untouched")
    assert (run / "checkpoints/latest.json").read_bytes() == pointer
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-0000002", "step-0000004"]
    assert checkpoint.verify_checkpoint(run / NEWEST) is None
    monkeypatch.setattr(checkpoint, "_write_file", real)  # space freed: the resume completes, exactly
    assert cli(*command("resume", run))[0] == 0
    assert same_weights(run, runs["straight"])


def test_checkpoint_write_failure_in_the_python_api(run, monkeypatch):
    from attnlab.training import checkpoint

    def read_only(path, fill):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(checkpoint, "_write_file", read_only)
    saved = json.loads((run / "train_config.json").read_text())
    cfg = TrainConfig.from_dict({**saved, "out_dir": str(run), "resume": True, "stop_at_step": None})
    with pytest.raises(WriteError, match="Read-only file system"):
        train(cfg)
    assert not list((run / "checkpoints").glob(".*partial"))


# ------------------------------------------------------------------------------------------ data cache
def test_damaged_token_cache_is_rebuilt(run, cli):
    from attnlab.paths import cache_dir

    code, first, _ = cli(*command("eval", run))
    assert code == 0
    (tokens,) = (cache_dir() / "tokens").glob("*/tokens.bin")
    flip_bytes(tokens)
    code, second, err = cli(*command("eval", run))
    assert code == 0 and "is damaged (tokens.bin differs from the checksum written with it); rebuilding it" in \
        " ".join(err.split())
    assert json.loads(second)["loss"] == json.loads(first)["loss"]
    truncate(tokens)
    code, third, err = cli(*command("eval", run))
    assert code == 0 and "rebuilding it" in err and json.loads(third)["loss"] == json.loads(first)["loss"]


# ------------------------------------------------------------------------------------------ convert
DAT_CONFIG = {"vocab_size": 100, "d_model": 64, "n_layers": 2, "n_heads_sa": 2, "n_heads_ra": 2, "dff": None,
              "dropout_rate": 0.0, "activation": "gelu", "norm_first": True, "max_block_size": 32,
              "sa_kwargs": {"n_kv_heads": 1}, "ra_kwargs": {"n_relations": 8, "rel_activation": "identity",
                                                           "n_kv_heads": 1},
              "symbol_retrieval": "symbolic_attention", "pos_enc_type": "RoPE", "bias": False,
              "symbol_retrieval_kwargs": {"d_model": 64, "n_symbols": 16, "n_heads": 4, "trainable_symbols": False}}


PREFIX = "layers.blocks.0.dual_attn."  # the weights' prefix that tells a DualAttnTransformerLM checkpoint


class NotATensor:
    """An object ``weights_only`` loading refuses to unpickle."""


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p.write_text("hello, not a checkpoint"), "not a readable PyTorch checkpoint"),
    (lambda p: p.write_bytes(b""), "not a readable PyTorch checkpoint"),
    (lambda p: (torch.save({"config": DAT_CONFIG, "model": {}}, p), truncate(p)), "not a readable PyTorch checkpoint"),
    (lambda p: (torch.save({"config": DAT_CONFIG, "model": {}}, p), flip_bytes(p)), "not a readable PyTorch"),
    (lambda p: torch.save({"config": NotATensor()}, p), "not a readable PyTorch checkpoint"),
    (lambda p: torch.save({"weights": {}}, p), "expected keys 'config'"),
    (lambda p: torch.save({"config": DAT_CONFIG, "model": {PREFIX + "self_attention.wq.weight": torch.ones(64, 64)}},
                          p), "its tensors do not fit its config (KeyError"),
])
def test_convert_refuses_what_is_not_a_checkpoint(cli, tmp_path, make, needle):
    source = tmp_path / "ckpt.pt"
    make(source)
    code, _, err = cli("convert", "dat-checkpoint", str(source), str(tmp_path / "out"))
    assert_clear_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_convert_into_a_file_is_refused(cli, tmp_path):
    torch.save({"config": DAT_CONFIG, "model": {}}, tmp_path / "ckpt.pt")
    (tmp_path / "out").write_text("a file")
    code, _, err = cli("convert", "dat-checkpoint", str(tmp_path / "ckpt.pt"), str(tmp_path / "out"))
    assert_clear_error(code, err, "is a file")


# ------------------------------------------------------------------------------------------ the real script
def test_console_script_prints_one_line_not_a_traceback(run):
    truncate(run / "model.safetensors")
    result = subprocess.run([sys.executable, "-m", "attnlab", "info", str(run)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    size = (run / "model.safetensors").stat().st_size
    expected = (f"attnlab info: error: {run}/model.safetensors: truncated: the header describes more tensor data "
                f"than the file's {size:,} bytes; the run's checkpoint has an intact copy: cp "
                f"{run}/checkpoints/step-0000004/model.safetensors {run}/model.safetensors")
    assert result.stderr.strip().splitlines() == [expected]


def test_api_raises_the_specific_class(run):
    flip_bytes(run / "config.json")
    with pytest.raises(CorruptFileError) as info:
        attnlab.load(run)
    assert info.value.path == run / "config.json" and "not text" in info.value.problem
