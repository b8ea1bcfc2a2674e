"""`attnlab train` on the command line: what a resume takes from the run, schedule changes, the closing hint."""

import json
import re
from pathlib import Path

import pytest

LINES = 600


@pytest.fixture
def ledger(tmp_path) -> Path:
    """Numbered lines, nothing like Shakespeare: where a prompt comes from shows in its number."""
    path = tmp_path / "ledger.txt"
    path.write_text("\n".join(f"entry {i:04d} of the ledger, paid" for i in range(LINES)) + "\n")
    return path


def args(data: Path, run: Path, *more: str) -> list[str]:
    return ["train", "--preset", "debug", "--data", str(data), "--out-dir", str(run), "--batch-size", "2",
            "--block-size", "16", "--max-steps", "6", "--warmup-steps", "2", "--lr", "0.01", "--eval-interval", "6",
            "--eval-tokens", "256", "--sample-tokens", "0", "--no-progress", "--no-tensorboard", *more]


def latest_step(run: Path) -> int:
    return json.loads((run / "checkpoints/latest.json").read_text())["step"]


def test_resume_refuses_a_changed_schedule_in_one_line(ledger, tmp_path, run_cli):
    run = tmp_path / "run"
    assert run_cli(*args(ledger, run))[0] == 0
    code, _, err = run_cli("train", "--out-dir", str(run), "--resume", "--max-steps", "8", "--lr", "0.005",
                           "--min-lr", "0.0001", "--warmup-steps", "1")
    assert code == 2
    assert err.strip().splitlines() == [
        ("attnlab train: error: --resume with another schedule than the run's (max_steps 6 → 8, lr 0.01 → 0.005, "
         "min_lr None → 0.0001, warmup_steps 2 → 1); pass --allow-schedule-change to resume with the new one")
    ]
    assert latest_step(run) == 6


def test_an_allowed_schedule_change_warns_and_is_not_remembered(ledger, tmp_path, run_cli):
    run = tmp_path / "run"
    assert run_cli(*args(ledger, run))[0] == 0
    code, _, err = run_cli("train", "--out-dir", str(run), "--resume", "--max-steps", "8", "--allow-schedule-change")
    assert code == 0, err
    assert "warning: resuming with a changed schedule (max_steps 6 → 8)" in " ".join(err.split())
    assert latest_step(run) == 8
    assert json.loads((run / "train_config.json").read_text())["max_steps"] == 8  # the run's schedule now
    code, _, err = run_cli("train", "--out-dir", str(run), "--resume", "--max-steps", "9")
    assert code == 2 and "max_steps 8 → 9" in err  # the confirmation held for one resume only


def test_resume_continues_a_run_stopped_at_a_step(ledger, tmp_path, run_cli):
    """The saved stop_at_step concerns the invocation that gave it: the resume trains on to max_steps."""
    run = tmp_path / "run"
    assert run_cli(*args(ledger, run, "--stop-at-step", "3", "--checkpoint-interval", "3"))[0] == 0
    assert latest_step(run) == 3
    code, _, err = run_cli("train", "--out-dir", str(run), "--resume")
    assert code == 0, err
    assert latest_step(run) == 6


def test_the_closing_hint_prompts_with_the_runs_own_text(ledger, tmp_path, run_cli):
    run = tmp_path / "run"
    code, _, err = run_cli(*args(ledger, run))
    assert code == 0, err
    hint = next(line for line in err.splitlines() if line.startswith("saved to"))
    assert "ROMEO" not in hint
    match = re.fullmatch(rf"saved to {run}  \(attnlab generate {run} --prompt 'entry (\d{{4}}) of'\)", hint)
    assert match, hint
    assert int(match[1]) >= 0.9 * LINES - 1  # the opening words of the validation split, the text's tail
