"""``attnlab eval RUN`` with nothing else repeats the run's last validation: its data (and how it was read),
split, windows, batches, dtype, segment streaming and token budget, so its number is the one training printed."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

import attnlab
from attnlab.data import prepare_data

WORDS = ["to", "be", "or", "not", "to", "be", "that", "is", "the", "question", "whether", "tis", "nobler", "in",
         "the", "mind", "to", "suffer"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """JSONL records whose text is under ``body``: a run must remember its text field to read them again."""
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    lines = [json.dumps({"body": " ".join(WORDS[i % 7:] + WORDS[:i % 5]), "id": i}) for i in range(120)]
    path.write_text("\n".join(lines) + "\n")
    return path


RUNS = {
    # learned positions, bf16 autocast, a validation budget smaller than the split
    "gpt": {"model": "gpt", "dtype": "bfloat16", "batch_size": 4, "block_size": 32, "eval_tokens": 300,
            "val_fraction": 0.2},
    # Transformer-XL memory: validation reads streams of segments, carrying memory
    "lsw": {"model": "lsw", "segment_stream": True, "batch_size": 2, "block_size": 16, "eval_tokens": 400,
            "val_fraction": 0.25},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """One tiny trained run per setting above, validated once at its last step."""
    trained = {}
    with pytest.MonkeyPatch.context() as patch:  # the autouse cache fixture is per test; this one is per module
        patch.setenv("ATTNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        for name, options in RUNS.items():
            out = tmp_path_factory.mktemp(f"run-{name}")
            attnlab.train(preset="debug", data=str(corpus), text_field="body", max_steps=12, lr=1e-2,
                          warmup_steps=2, eval_interval=12, sample_tokens=0, progress=False, tensorboard=False,
                          out_dir=str(out), **options)
            trained[name] = out
    return trained


def last_validation(run) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "val_bpb" in record][-1]


def val_targets(run, corpus, val_fraction: float) -> int:
    """The targets in the run's validation split, from the data as the run read it."""
    data = prepare_data(str(corpus), attnlab.load_tokenizer(run), text_field="body", val_fraction=val_fraction,
                        progress=False)
    return len(data.val) - 1


@pytest.mark.parametrize("name", RUNS)
def test_eval_with_no_options_prints_the_last_validation(runs, corpus, run_cli, name):
    run, val = runs[name], last_validation(runs[name])
    code, out, err = run_cli("eval", str(run))
    assert code == 0, err
    split = val_targets(run, corpus, RUNS[name]["val_fraction"])
    assert val["val_tokens"] == RUNS[name]["eval_tokens"] < split
    assert out == (f"val split of {corpus} (the run's data): loss {val['val_loss']:.4f}  ppl {val['val_ppl']:.2f}  "
                   f"bits/byte {val['val_bpb']:.4f}  ({val['val_tokens']:,} of {split:,} tokens)\n")
    assert f"{val['val_tokens']}/{val['val_tokens']} tokens" in err  # the progress bar


@pytest.mark.parametrize("name", RUNS)
def test_eval_reproduces_the_last_val_bpb(runs, run_cli, name):
    run, val = runs[name], last_validation(runs[name])
    code, out, err = run_cli("eval", str(run), "--json", "--no-progress")
    assert code == 0 and "tokens" not in err, err
    metrics = json.loads(out)
    assert metrics["bpb"] == pytest.approx(val["val_bpb"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(val["val_loss"], abs=1e-6)
    assert metrics["tokens"] == val["val_tokens"]
    assert attnlab.evaluate(run)["bpb"] == pytest.approx(val["val_bpb"], abs=1e-6)


def test_memory_follows_the_run(runs):
    """The lsw run trained with segment streaming; scored without carrying memory, the number differs."""
    val = last_validation(runs["lsw"])
    without = attnlab.evaluate(runs["lsw"], memory=False)
    assert without["tokens"] == val["val_tokens"]
    assert abs(without["bpb"] - val["val_bpb"]) > 1e-4


def test_full_scores_the_whole_split(runs, corpus):
    metrics = attnlab.evaluate(runs["gpt"], full=True)
    assert metrics["tokens"] == metrics["split_tokens"] == val_targets(runs["gpt"], corpus, 0.2)
    assert metrics["data"] == str(corpus) and metrics["split"] == "val"


def test_other_data_keeps_the_run_s_split_settings(runs, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("all the world's a stage, and all the men and women merely players\n" * 40)
    metrics = attnlab.evaluate(runs["gpt"], str(other), full=True)
    expected = prepare_data(str(other), attnlab.load_tokenizer(runs["gpt"]), val_fraction=0.2, progress=False)
    assert metrics["data"] == str(other)
    assert metrics["tokens"] == metrics["split_tokens"] == len(expected.val) - 1


def test_model_directory_without_a_run_needs_data(runs, corpus, tmp_path, run_cli):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for item in runs["gpt"].iterdir():
        if item.is_file() and item.name not in ("train_config.json", "run_info.json", "metrics.jsonl"):
            shutil.copy(item, model_dir)
    code, out, err = run_cli("eval", str(model_dir))
    assert code == 2 and out == ""
    message = f"{model_dir} has no train_config.json to take the data from: give the data to score (--data)"
    assert err.strip().splitlines() == [f"attnlab eval: error: {message}"]
    code, out, err = run_cli("eval", str(model_dir), "--data", str(corpus), "--text-field", "body", "--json")
    assert code == 0, err
    metrics = json.loads(out)  # attnlab train's defaults: a 10 % validation split, scored whole
    assert metrics["tokens"] == metrics["split_tokens"] == val_targets(runs["gpt"], corpus, 0.1)


def test_tasks_without_lm_eval_say_what_to_install(runs, monkeypatch, run_cli):
    from attnlab.harness import LM_EVAL_MISSING

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    code, out, err = run_cli("eval", str(runs["gpt"]), "--tasks", "hellaswag")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"attnlab eval: error: {LM_EVAL_MISSING}"]
    assert LM_EVAL_MISSING.endswith("pip install attnlab[eval]")


def test_budget_flags_conflict(runs, run_cli):
    code, _, err = run_cli("eval", str(runs["gpt"]), "--full", "--eval-tokens", "10")
    assert code == 2 and err.strip() == "attnlab eval: error: give either --eval-tokens or --full, not both"


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_help_describes_every_option(command, run_cli):
    import argparse

    from attnlab.optiondocs import subcommand_parsers

    actions = [a for a in subcommand_parsers()[command]._actions if not isinstance(a, argparse._HelpAction)]
    assert all(a.help and len(a.help.split()) >= 3 for a in actions), [a.dest for a in actions if not a.help]
    code, out, _ = run_cli(command, "--help")
    shown = "".join(out.split())  # argparse wraps lines, even inside hyphenated words
    assert code == 0
    for action in actions:
        assert "".join(action.help.replace("`", "").split()) in shown, action.dest
