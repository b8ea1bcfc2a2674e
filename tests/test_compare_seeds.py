"""``attnlab compare --seeds N``: N runs per model, mean ± 95 % interval in the report, resume per (model, seed)."""

from __future__ import annotations

import json
import math
import statistics

import pytest

import attnlab.training
from attnlab.bench.specs import safe_name
from attnlab.compare import CompareConfig, run_compare, write_report
from attnlab.compare.report import RESULT_FIELDS
from attnlab.errors import ConfigError

T_975_DF1 = 12.706204736174707  # Student t, 97.5 % quantile, 1 degree of freedom (tables; scipy.stats.t.ppf)
TEXT = "to be, or not to be, that is the question:\nwhether 'tis nobler in the mind to suffer\n" * 60


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def _config(corpus, out, seeds, models=("gpt:debug", "gpt:debug:pos=rope")) -> CompareConfig:
    return CompareConfig.from_dict({
        "name": "seeds", "models": list(models), "out_dir": str(out), "progress": False, "seeds": seeds,
        "train": {"data": str(corpus), "max_steps": 3, "batch_size": 2, "block_size": 32, "warmup_steps": 1,
                  "eval_interval": 2, "eval_tokens": 256, "sample_tokens": 8, "sample_prompt": "to be", "seed": 5,
                  "device": "cpu"},
    })


def _count_training(monkeypatch) -> list[int]:
    """Record the seed of every run that actually trains (compare imports ``train`` at call time)."""
    calls: list[int] = []
    real = attnlab.training.train

    def counting(cfg, console=None):
        calls.append(cfg.seed)
        return real(cfg, console)

    monkeypatch.setattr(attnlab.training, "train", counting)
    return calls


def test_two_seeds_two_runs_per_model_and_mean_ci_in_the_table(tmp_path, corpus, monkeypatch):
    out = tmp_path / "report"
    calls = _count_training(monkeypatch)
    result = run_compare(_config(corpus, out, seeds=2))
    paths = write_report(result)
    assert sorted(calls) == [5, 5, 6, 6]
    by_model = result.by_model()
    assert list(by_model) == ["gpt:debug", "gpt:debug:pos=rope"]
    for outcomes in by_model.values():
        assert [o.seed for o in outcomes] == [5, 6] and all(o.error is None for o in outcomes)
        assert len({o.run_dir for o in outcomes}) == 2
        # different seeds: different weights and batches, so different losses
        assert outcomes[0].val_loss != outcomes[1].val_loss and outcomes[0].train_loss != outcomes[1].train_loss
    safe = safe_name("gpt:debug")
    assert (out / "runs" / safe / "metrics.jsonl").is_file()  # the first seed where a one-seed compare puts it
    assert (out / "runs" / f"{safe}--seed-6" / "metrics.jsonl").is_file()
    assert json.loads((out / "runs" / safe / "train_config.json").read_text())["seed"] == 5

    data = json.loads(paths["json"].read_text())
    assert data["seeds"] == [5, 6] and len(data["results"]) == 4
    assert {(r["label"], r["seed"]) for r in data["results"]} == {(m, s) for m in by_model for s in (5, 6)}
    md = paths["markdown"].read_text()
    for summary in data["summary"]:
        runs = [o for o in by_model[summary["label"]]]
        for metric, digits in (("val_loss", 4), ("val_bpb", 4), ("train_loss", 4)):
            a, b = (getattr(o, metric) for o in runs)
            mean, half = (a + b) / 2, T_975_DF1 * statistics.stdev([a, b]) / math.sqrt(2)
            stored = summary["metrics"][metric]
            assert stored["values"] == [a, b] and stored["n"] == 2
            assert stored["mean"] == pytest.approx(mean, rel=1e-12)
            assert stored["ci95"] == pytest.approx(half, rel=1e-6)
            assert f"{mean:.{digits}f} ± {half:.{digits}f}" in md
    row = next(line for line in md.splitlines() if line.startswith("| gpt:debug:pos=rope | 2 |"))
    assert row.count("±") == 7  # every per-run metric of the table has its interval
    # the second model against the first: Welch interval of the difference, and a verdict
    (diff,) = data["differences"]
    assert diff["reference"] == "gpt:debug" and diff["lower_than_reference"] in ("holds", "does not hold",
                                                                                  "inconclusive")
    rope = [o.val_bpb for o in by_model["gpt:debug:pos=rope"]]
    base = [o.val_bpb for o in by_model["gpt:debug"]]
    assert diff["difference"]["mean"] == pytest.approx(statistics.mean(rope) - statistics.mean(base))
    assert "## Every run" in md and "## Bits per byte against gpt:debug" in md
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    csv_header = paths["csv"].read_text().splitlines()[0].split(",")
    assert csv_header[:2] == ["label", "seed"]


def test_rerun_skips_finished_runs_and_more_seeds_train_only_the_new_ones(tmp_path, corpus, monkeypatch):
    out = tmp_path / "report"
    calls = _count_training(monkeypatch)
    first = run_compare(_config(corpus, out, seeds=1, models=("gpt:debug",)))
    write_report(first)
    assert calls == [5]
    metrics = out / "runs" / safe_name("gpt:debug") / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    # one seed: the report is the one-seed report of before (no seed column, no intervals)
    data = json.loads((out / "results.json").read_text())
    assert sorted(data["results"][0]) == sorted(RESULT_FIELDS) and "summary" not in data
    assert "±" not in (out / "report.md").read_text()

    again = run_compare(_config(corpus, out, seeds=1, models=("gpt:debug",)))
    assert calls == [5] and metrics.stat().st_mtime_ns == stamp  # finished: not trained, not even resumed
    (o,) = again.outcomes
    assert (o.val_bpb, o.sample, o.peak_mem_bytes) == (first.outcomes[0].val_bpb, first.outcomes[0].sample,
                                                        first.outcomes[0].peak_mem_bytes)

    more = run_compare(_config(corpus, out, seeds=3, models=("gpt:debug",)))
    write_report(more)
    assert calls == [5, 6, 7] and metrics.stat().st_mtime_ns == stamp
    assert [o.seed for o in more.outcomes] == [5, 6, 7]
    assert more.outcomes[0].val_bpb == first.outcomes[0].val_bpb
    assert all(o.peak_mem_bytes == first.outcomes[0].peak_mem_bytes for o in more.outcomes)
    summary = json.loads((out / "results.json").read_text())["summary"][0]
    assert summary["metrics"]["val_bpb"]["n"] == 3

    run_compare(_config(corpus, out, seeds=3, models=("gpt:debug",)))
    assert calls == [5, 6, 7]


def test_an_interrupted_run_is_resumed_not_reused(tmp_path, corpus, monkeypatch):
    out = tmp_path / "report"
    cfg = _config(corpus, out, seeds=2, models=("gpt:debug",))
    run_compare(cfg)
    # pretend the second seed's run stopped early: its outcome says 2 of 3 steps
    saved = out / "runs" / f"{safe_name('gpt:debug')}--seed-6" / "compare_outcome.json"
    record = json.loads(saved.read_text())
    saved.write_text(json.dumps({**record, "steps": 2}))
    calls = _count_training(monkeypatch)
    run_compare(cfg)
    assert calls == [6]


@pytest.mark.parametrize("seeds", [0, -1, 1.5, True, "2"])
def test_bad_seeds_are_refused(seeds, tmp_path, corpus):
    with pytest.raises(ConfigError, match="seeds must be an integer >= 1"):
        _config(corpus, tmp_path / "r", seeds=seeds)


def test_cli_seeds_flag(run_cli, tmp_path, corpus):
    code, _, err = run_cli("compare", "--models", "gpt:debug", "--seeds", "0", "--data", str(corpus))
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "seeds must be" in err
    out = tmp_path / "cli"
    code, _, err = run_cli("compare", "--models", "gpt:debug", "--seeds", "2", "--data", str(corpus), "--max-steps",
                           "2", "--batch-size", "2", "--block-size", "32", "--warmup-steps", "1", "--eval-interval",
                           "2", "--eval-tokens", "128", "--sample-tokens", "0", "--no-progress", "--out-dir", str(out))
    assert code == 0, err
    data = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in data["results"]] == [1337, 1338]  # attnlab train's default seed, then the next
