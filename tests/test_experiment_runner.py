"""The ``attnlab experiment`` runner: resume, refusal to mix configurations, the summary's numbers and verdicts,
the CLI, and the experiments' training loop and metrics against hand computations."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import attnlab
from attnlab.errors import ConfigError
from attnlab.experiments import registry, runner
from attnlab.experiments import training as tr
from attnlab.experiments.base import Claim, Experiment, RunResult, RunSpec
from attnlab.experiments.math import encode
from attnlab.experiments.math_problems import Problem

T_975_2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)


class Toy(Experiment):
    """Two arms over sizes 1 and 2; A scores 10 + seed + size, B 5 + seed + size (or ``gap`` lower), so the
    claims' verdicts are known in advance. ``fail_on`` raises inside that run, before its result is written."""

    name = "toy"
    description = "a toy experiment for the runner's tests"
    metrics = {"score": True, "loss": False}
    x_param = "size"

    def __init__(self, version: int = 1, gap: float = 5.0, fail_on: str | None = None):
        self.version, self.gap, self.fail_on, self.calls = version, gap, fail_on, []

    def plan(self, scale, seeds, sizes=None):
        return [RunSpec(arm, seed, {"size": size}) for size in (sizes or [1, 2]) for seed in range(seeds)
                for arm in ("A", "B")]

    def claims(self, scale, sizes=None):
        return [Claim("A beats B", "A", "B", "score", True, source="paper: A 1.0 vs B 0.5"),
                Claim("B beats A", "B", "A", "score", True),
                Claim("A has a lower loss", "A", "B", "loss", False, where={"size": 1})]

    def configs(self, scale):
        return {"arms": {"A": {"version": self.version}, "B": {"version": self.version}}}

    def reference(self, arm, params, metric):
        return 0.5 if (arm, metric) == ("A", "score") else None

    def run(self, spec, scale, out_dir, progress):
        if spec.key == self.fail_on:
            raise KeyboardInterrupt
        self.calls.append(spec.key)
        progress(0.5)
        size = spec.params["size"]
        score = (10.0 if spec.arm == "A" else 10.0 - self.gap) + spec.seed + size
        loss = 1.0 + 0.1 * spec.seed if spec.arm == "A" else 1.0 + 0.1 * ((spec.seed * 7) % 3)
        return RunResult(final={"score": score, "loss": loss},
                         curves={"score": [[1, score / 2], [2, score]]})


def run_toy(experiment: Toy, out: Path, **kw: Any) -> runner.Outcome:
    kw.setdefault("seeds", 3)
    return runner.run_experiment(experiment, scale="laptop", out_dir=out, show_progress=False, **kw)


def test_resume_redoes_only_the_runs_without_a_result(tmp_path):
    specs = Toy().plan("laptop", 3)
    killed = specs[4].key
    with pytest.raises(KeyboardInterrupt):
        run_toy(Toy(fail_on=killed), tmp_path)
    finished = {p.parent.name for p in (tmp_path / "runs").glob("*/result.json")}
    assert finished == {s.key for s in specs[:4]}  # the interrupted run left no result
    again = Toy()
    outcome = run_toy(again, tmp_path)
    assert again.calls == [s.key for s in specs[4:]] and (outcome.trained, outcome.skipped) == (8, 4)
    third = Toy()
    assert run_toy(third, tmp_path).trained == 0 and third.calls == []
    # a damaged result file is not trusted: that run alone is redone
    (tmp_path / "runs" / specs[0].key / "result.json").write_text("{not json")
    fourth = Toy()
    run_toy(fourth, tmp_path)
    assert fourth.calls == [specs[0].key]


def test_max_runs_stops_early_and_the_rest_follow(tmp_path):
    first = Toy()
    assert run_toy(first, tmp_path, max_runs=3).trained == 3
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["timing"]["runs_finished"] == 3 and results["timing"]["runs_planned"] == 12
    second = Toy()
    run_toy(second, tmp_path)
    assert len(second.calls) == 9 and not set(second.calls) & set(first.calls)


def test_another_configuration_is_refused_until_fresh(tmp_path):
    run_toy(Toy(version=1), tmp_path, seeds=2)
    with pytest.raises(ConfigError, match="another configuration.*--fresh"):
        run_toy(Toy(version=2), tmp_path, seeds=2)
    with pytest.raises(ConfigError, match="another configuration"):
        runner.run_experiment(Toy(version=1), scale="paper", seeds=2, out_dir=tmp_path, show_progress=False)
    # more seeds of the same configuration are fine: only the new runs train
    more = Toy(version=1)
    assert run_toy(more, tmp_path, seeds=3).trained == 4
    fresh = Toy(version=2)
    outcome = run_toy(fresh, tmp_path, seeds=2, fresh=True)
    assert outcome.trained == 8 and outcome.skipped == 0
    assert json.loads((tmp_path / "experiment.json").read_text())["seeds"] == 2


def test_runs_without_a_state_file_are_refused(tmp_path):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no experiment.json"):
        run_toy(Toy(), tmp_path)


def test_summary_numbers_verdicts_report_and_plots(tmp_path):
    run_toy(Toy(), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 12 and results["scale"] == "laptop"
    cell = next(r for r in results["aggregate"] if r["arm"] == "A" and r["params"] == {"size": 1}
                and r["metric"] == "score")
    # seeds 0, 1, 2 → 11, 12, 13: mean 12, sample sd 1, half-width t(0.975, 2) · 1/√3
    assert cell["values"] == [11.0, 12.0, 13.0] and cell["mean"] == pytest.approx(12.0)
    assert cell["ci95"] == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-6) and cell["paper"] == 0.5
    verdicts = {c["text"]: c for c in results["claims"]}
    a_beats_b = verdicts["A beats B"]
    # per seed, the mean over sizes 1 and 2: A 11.5 + seed, B 6.5 + seed; difference exactly 5, no spread
    assert a_beats_b["better_values"] == [11.5, 12.5, 13.5] and a_beats_b["worse_values"] == [6.5, 7.5, 8.5]
    assert a_beats_b["verdict"] == "holds" and a_beats_b["difference_ci"]["mean"] == pytest.approx(5.0)
    assert verdicts["B beats A"]["verdict"] == "does not hold"
    # losses at size 1: A 1.0, 1.1, 1.2; B 1.0, 1.1, 1.2 in another order: no difference → inconclusive
    assert verdicts["A has a lower loss"]["verdict"] == "inconclusive"
    curve = next(c for c in results["curves"] if c["arm"] == "B" and c["params"] == {"size": 2})
    assert [p["x"] for p in curve["points"]] == [1.0, 2.0] and curve["points"][1]["mean"] == pytest.approx(8.0)
    report = (tmp_path / "report.md").read_text()
    assert "`attnlab experiment toy --scale laptop --seeds 3 --out-dir" in report
    assert "12.000 ± 2.484 (paper 0.500)" in report and "**holds**" in report and "**does not hold**" in report
    assert "process CPU time" in report and "-core" in report
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["loss_vs_size.png", "score_vs_size.png", "score_vs_step.png"]  # loss: final values only
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_report_only_rebuilds_the_summary_from_the_run_files(tmp_path):
    run_toy(Toy(), tmp_path)
    before = json.loads((tmp_path / "results.json").read_text())
    for name in ("results.json", "report.md"):
        (tmp_path / name).unlink()
    runner.summarise(Toy(), tmp_path)
    after = json.loads((tmp_path / "results.json").read_text())
    assert after == before and (tmp_path / "report.md").exists()
    with pytest.raises(ConfigError, match="run the experiment first"):
        runner.summarise(Toy(), tmp_path / "elsewhere")


def test_eta_weights_remaining_runs_by_their_grid_point():
    a, b = RunSpec("A", 0, {"size": 1}), RunSpec("B", 0, {"size": 1})
    done = {runner._point_key(RunSpec("A", 1, {"size": 1})): [10.0], runner._point_key(RunSpec("B", 1, {"size": 1})): [30.0]}
    assert runner._eta([a, b], done, 0.5) == pytest.approx(5.0 + 30.0)
    assert runner._eta([a], {}, 0.0) is None
    assert runner.format_seconds(3725) == "1 h 02 min" and runner.format_seconds(65) == "1 min 05 s"


# ------------------------------------------------------------------------------------------ registry and CLI
def test_listing_names_every_experiment_without_importing_them():
    code = ("import sys; from attnlab.experiments import registry; rows = registry.listing(); "
            "print(sorted(n for n, _, _ in rows)); "
            "print(any(m in sys.modules for m in ('attnlab.experiments.relational', 'attnlab.experiments.math', "
            "'attnlab.experiments.vision', 'attnlab.experiments.lm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == str(sorted(["relational-games", "math", "vision-digits", "lm-dat", "lm-leap"]))
    assert out[1] == "False"


def test_registry_errors_are_one_clear_line(monkeypatch):
    with pytest.raises(ConfigError, match="unknown experiment 'nope'; choose one of relational-games"):
        registry.get("nope")
    monkeypatch.setitem(registry.EXPERIMENTS, "ghost", ("attnlab.experiments.no_such_module:X", "missing"))
    with pytest.raises(ConfigError, match="not available: its module attnlab.experiments.no_such_module"):
        registry.get("ghost")
    assert ("ghost", "missing", False) in registry.listing()
    monkeypatch.setitem(registry.EXPERIMENTS, "wrong", ("attnlab.experiments.runner:STATE", "not one"))
    with pytest.raises(ConfigError, match="is a str, not an Experiment"):
        registry.get("wrong")
    monkeypatch.setitem(registry.EXPERIMENTS, "absent", ("attnlab.experiments.runner:NOTHING", "no attribute"))
    with pytest.raises(ConfigError, match="has no NOTHING"):
        registry.get("absent")
    assert registry.get("vision-digits").name == "vision-digits"


def test_cli_lists_and_rejects_bad_input(run_cli):
    code, out, err = run_cli("experiment", "--list")
    assert code == 0 and "relational-games" in out and "vision-digits" in out and "math" in out
    code, out, err = run_cli("experiment", "nope")
    assert code == 2 and err.count("\n") == 1 and "unknown experiment" in err
    code, out, err = run_cli("experiment", "vision-digits", "--scale", "huge")
    assert code == 2 and "no scale 'huge'" in err and err.count("\n") == 1
    code, out, err = run_cli("experiment", "vision-digits", "--sizes", "15")
    assert code == 2 and "multiples of 10" in err
    code, out, err = run_cli("experiment")
    assert code == 2 and "--list" in err


def test_cli_runs_a_tiny_real_experiment_and_resumes(run_cli, tmp_path):
    out_dir = tmp_path / "digits"
    args = ("experiment", "vision-digits", "--scale", "smoke", "--seeds", "2", "--out-dir", str(out_dir),
            "--no-progress")
    code, out, err = run_cli(*args)
    assert code == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    assert results["timing"]["runs_finished"] == 4 and {c["verdict"] for c in results["claims"]} <= {
        "holds", "does not hold", "inconclusive"}
    configs = json.loads((out_dir / "configs.json").read_text())
    assert set(configs["arms"]) == {"ViT", "ViDAT"} and configs["arms"]["ViT"]["parameters"] > 0
    code, out, err = run_cli(*args)
    assert code == 0 and "4 already finished, 0 to train" in err
    code, out, err = run_cli("experiment", "vision-digits", "--report-only", "--out-dir", str(out_dir))
    assert code == 0 and "report.md" in out


# ------------------------------------------------------------------------------------------ training and metrics
def test_per_character_accuracy_ignores_padding_and_exact_match_needs_the_whole_answer():
    pad = 0
    labels = torch.tensor([[5, 6, 2, 0, 0],
                           [7, 2, 0, 0, 0],
                           [8, 9, 9, 9, 2]])
    predictions = torch.tensor([[5, 6, 2, 4, 4],    # all 3 right; junk after the end is not read
                                [7, 3, 2, 0, 0],    # 1 of 2 (the end token is wrong)
                                [8, 9, 1, 9, 2]])   # 4 of 5
    assert tr.token_accuracy(predictions, labels, pad) == (8, 10)
    assert tr.exact_matches(predictions, labels, pad) == 1
    short = predictions[:, :2]  # a prediction that stops early is wrong where it is missing
    assert tr.token_accuracy(short, labels, pad) == (5, 10) and tr.exact_matches(short, labels, pad) == 0


def test_learning_rate_warmup_then_cosine_and_batches_cover_each_epoch():
    s = tr.TrainSettings(steps=110, batch_size=4, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert tr.learning_rate(0, s) == pytest.approx(0.1) and tr.learning_rate(9, s) == pytest.approx(1.0)
    assert tr.learning_rate(10, s) == pytest.approx(1.0) and tr.learning_rate(60, s) == pytest.approx(0.55)
    assert tr.learning_rate(110, s) == pytest.approx(0.1)
    constant = tr.TrainSettings(steps=10, batch_size=4, lr=0.5, schedule="constant")
    assert {tr.learning_rate(i, constant) for i in range(10)} == {0.5}
    batches = tr.epoch_batches(10, 4, torch.Generator().manual_seed(0))
    first = torch.cat([next(batches) for _ in range(5)])  # 20 indices: two whole epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    assert len(next(tr.epoch_batches(3, 8, torch.Generator()))) == 3  # a batch never exceeds the set
    assert tr.steps_for_epochs(2, 10, 4, 1) == 5 and tr.steps_for_epochs(1, 10, 4, 7) == 7
    with pytest.raises(ConfigError, match="schedule"):
        tr.TrainSettings(steps=1, batch_size=1, lr=1.0, schedule="linear")


def _seq2seq(seed: int = 0):
    torch.manual_seed(seed)
    return attnlab.create_model("dat-seq2seq", "debug", vocab_size=16, pad_token_id=0, eos_token_id=2,
                                decoder_start_token_id=1, dropout=0.0).eval()


def test_greedy_decoding_is_cached_and_matches_an_uncached_argmax_loop():
    model = _seq2seq()
    source = torch.randint(3, 16, (3, 7))
    source[2, 5:] = 0
    mask = source != 0
    decoded = tr.greedy_decode(model, source, mask, max_new_tokens=6)
    for row in range(3):
        src = source[row:row + 1, : int(mask[row].sum())]
        tokens = [1]
        for _ in range(6):  # one full forward per step, no cache
            logits = model(input_ids=src, decoder_input_ids=torch.tensor([tokens]), use_cache=False).logits
            tokens.append(int(logits[0, -1].argmax()))
            if tokens[-1] == 2:
                break
        got = decoded[row].tolist()
        assert got[: len(tokens) - 1] == tokens[1:] and all(t == 0 for t in got[len(tokens) - 1:])


def test_seq2seq_accuracies_against_a_per_position_computation():
    model = _seq2seq(1)
    source = torch.randint(3, 16, (4, 6))
    labels = tr.greedy_decode(model, source, source != 0, max_new_tokens=6)  # the model's own answers
    labels = torch.nn.functional.pad(labels, (0, 6 - labels.shape[1]))  # (padded after an end token)
    data = tr.Seq2SeqData(source=source, labels=labels, pad_id=0)
    assert tr.greedy_exact_match(model, data) == 1.0
    wrong = labels.clone()
    wrong[0, 0] = 3 if wrong[0, 0] != 3 else 4
    assert tr.greedy_exact_match(model, tr.Seq2SeqData(source, wrong, 0)) == 0.75
    right = total = 0
    for row in range(4):  # teacher forcing by hand: each position sees the true previous labels
        n = int((labels[row] != 0).sum())
        for t in range(n):
            decoder = torch.tensor([[1] + labels[row, :t].tolist()])
            logits = model(input_ids=source[row:row + 1], decoder_input_ids=decoder, use_cache=False).logits
            right += int(logits[0, -1].argmax() == labels[row, t])
            total += 1
    assert tr.teacher_forcing_accuracy(model, data) == pytest.approx(right / total)


def test_training_is_deterministic_per_seed():
    def once(seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        model = attnlab.create_model("dat-vision", "debug", num_labels=2, dropout=0.0)
        x = torch.rand(16, 3, 16, 16)
        y = (x[:, 0].mean(dim=(1, 2)) > 0.5).long()
        settings = tr.TrainSettings(steps=6, batch_size=8, lr=3e-3)
        final = tr.train_image_classifier(model, x, y, settings, seed=seed, tests={"test": (x, y)})
        return final["train_loss"], final["accuracy"]

    assert once(0) == once(0)
    assert once(0) != once(1)


def test_math_encoding_ends_with_the_end_token_and_pads():
    data = encode([Problem("m", "1+1?", "2"), Problem("m", "What is 10?", "10")])
    assert data.source.shape == (2, 161) and data.labels.shape == (2, 31)
    assert data.source[0, 4] == 2 and data.source[0, 5] == 0 and data.labels[1, :3].tolist()[2] == 2
    assert data.source_lengths.tolist() == [5, 12] and data.label_lengths.tolist() == [2, 3]
    source, mask, labels = data.batch(torch.tensor([0]))
    assert source.shape == (1, 5) and mask.all() and labels.shape == (1, 2)
