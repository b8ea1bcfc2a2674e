"""Training on data that would surprise says so, with the numbers: a BPE vocabulary smaller than requested,
less text than one optimizer step, a validation split shorter than one context."""

from __future__ import annotations


def test_small_data_warns_with_the_numbers(run_cli, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("a tiny corpus, " * 30)
    code, _, err = run_cli(
        "train", "--model", "gpt", "--preset", "debug", "--data", str(corpus), "--tokenizer", "bpe",
        "--vocab-size", "4096", "--max-steps", "2", "--batch-size", "8", "--block-size", "64",
        "--eval-interval", "2", "--sample-tokens", "0", "--no-progress", "--no-tensorboard",
        "--out-dir", str(tmp_path / "run"),
    )
    assert code == 0, err
    text = " ".join(err.split())
    assert "not the requested 4,096" in text and "no more pairs to merge" in text
    assert "fewer than one optimizer step (512)" in text
    assert "shorter than one context of 64 + 1" in text


def test_enough_data_gives_no_warning(run_cli, tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text("plenty of text for a handful of steps. " * 400)
    code, _, err = run_cli(
        "train", "--model", "gpt", "--preset", "debug", "--data", str(corpus), "--max-steps", "2",
        "--batch-size", "4", "--block-size", "32", "--eval-interval", "2", "--eval-tokens", "256",
        "--sample-tokens", "0", "--no-progress", "--no-tensorboard", "--out-dir", str(tmp_path / "run"),
    )
    assert code == 0, err
    assert "warning:" not in err
