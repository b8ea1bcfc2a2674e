"""Suite targets: parsing (one-line ConfigErrors), evaluation (met / missed / not measured) and output."""

import json

import pytest
import yaml

from attnlab.bench.runner import BenchConfig, run_bench
from attnlab.bench.targets import RowRef, evaluate_targets, parse_row_ref, parse_target, parse_targets
from attnlab.cli import main
from attnlab.errors import ConfigError


def target(**values):
    return {"name": "t", "value": "a train 64", "over": "a train 32", "max": 2, **values}


def row(model, kind, seq_len, time=1.0, status="ok", mem=100):
    return {"model": model, "kind": kind, "seq_len": seq_len, "status": status, "time_median_s": time,
            "peak_mem_bytes": mem}


# -------------------------------------------------------------------------------------------- parse
def test_row_references_take_labels_with_spaces_and_the_tables_kind_names():
    assert parse_row_ref("leap-global train 16384") == RowRef("leap-global", "train", 16384)
    assert parse_row_ref("my model v2 decode 8192") == RowRef("my model v2", "decode_cache", 8192)
    assert parse_row_ref("gpt:tiny recompute 128") == RowRef("gpt:tiny", "decode_nocache", 128)
    assert str(RowRef("gpt", "decode_cache", 128)) == "gpt decode 128"
    parsed = parse_target(target(min=0.5, metric="memory"))
    assert (parsed.min, parsed.max, parsed.metric, parsed.wanted) == (0.5, 2.0, "memory", "0.5 – 2")


@pytest.mark.parametrize(
    "item, message",
    [
        ({"value": "a train 64", "over": "a train 32", "max": 2}, "target 1: missing name"),
        (target(over=None), "target 't': missing over"),
        (target(max=None), "target 't': needs min and/or max"),
        (target(max="big"), "target 't': max must be a number"),
        (target(value="a train"), "target 't': 'a train' must be 'LABEL KIND SEQ'"),
        (target(value="a train sixty"), "must be 'LABEL KIND SEQ'"),
        (target(over="a fly 32"), "target 't': unknown kind 'fly' in 'a fly 32'"),
        (target(metric="energy"), "target 't': metric must be one of ('time', 'memory', 'cache')"),
        (target(maximum=3), "target 't': unknown key(s) maximum"),
        (target(paired="yes"), "target 't': paired must be true or false"),
        (target(paired=True, metric="memory"), "target 't': paired needs metric 'time'"),
        ("a train 64 / a train 32", "target 1: must be a mapping"),
    ],
)
def test_bad_targets_are_one_line_config_errors(item, message):
    with pytest.raises(ConfigError) as info:
        parse_targets([item])
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="must be|missing|needs|unknown"):
        BenchConfig(targets=[item])  # checked with the rest of the options, before anything runs


def test_targets_must_be_a_list():
    with pytest.raises(ConfigError, match="targets must be a list"):
        BenchConfig(targets={"name": "t"})


def test_a_target_naming_a_model_not_in_the_run_fails_before_the_run():
    cfg = BenchConfig(models=["gpt:debug"], targets=[target(value="gpt:debug train 16", over="gtp:debug train 16")])
    with pytest.raises(ConfigError, match="no model labelled 'gtp:debug' in this run .* pass --no-targets"):
        run_bench(cfg)


# ----------------------------------------------------------------------------------------- evaluate
def test_met_missed_and_not_measured():
    rows = [row("a", "train", 32, 0.5, mem=100), row("a", "train", 64, 1.5, mem=300),
            row("a", "train", 128, status="error: OutOfMemoryError: ..."), row("b", "decode_cache", 128, 0.002)]
    targets = parse_targets([
        target(name="met", max=3),
        target(name="missed", max=2),
        target(name="memory met", metric="memory", min=2.5, max=3.5),
        target(name="too fast", min=4),
        target(name="failed row", value="a train 128"),
        target(name="not run", value="b decode 8192", over="b decode 128"),
    ])
    results = {t["name"]: t for t in evaluate_targets(targets, rows)}
    assert results["met"]["status"] == "met" and results["met"]["ratio"] == 3.0
    assert (results["met"]["value"], results["met"]["over"]) == (1.5, 0.5)
    assert results["missed"]["status"] == "missed" and results["missed"]["ratio"] == 3.0
    assert results["memory met"]["status"] == "met" and results["memory met"]["ratio"] == 3.0
    assert results["too fast"]["status"] == "missed"
    failed = results["failed row"]
    assert failed["status"] == "not measured" and failed["ratio"] is None
    assert failed["reason"] == "a train 128: error: OutOfMemoryError: ..."
    assert results["not run"]["status"] == "not measured"
    assert results["not run"]["reason"] == "not run: b decode 8192"


# ------------------------------------------------------------------------------------------ end to end
def test_suite_targets_are_reported_in_the_table_json_and_markdown(tmp_path, capsys):
    suite = {
        "command": "bench", "models": [{"label": "g", "model": "gpt", "preset": "debug"}], "d_model": 32,
        "n_layers": 1, "seq_lens": [16, 32], "parts": ["train"], "batch_size": 1, "warmup": 0, "repeats": 1,
        "gemm_size": 32, "progress": False, "plots": False, "out_dir": str(tmp_path / "out"),
        "targets": [
            {"name": "longer is slower", "value": "g train 32", "over": "g train 16", "min": 0.001, "max": 1000},
            {"name": "impossible", "value": "g train 32", "over": "g train 16", "max": 1e-9},
            {"name": "not in this run", "value": "g train 64", "over": "g train 16", "max": 100},
        ],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["bench", "--suite", str(path)]) == 0
    out = capsys.readouterr().out
    assert "targets (value / over)" in out and "impossible" in out and "not run: g train 64" in out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    times = {r["seq_len"]: r["time_median_s"] for r in data["results"]}
    met, missed, absent = data["targets"]
    assert met["status"] == "met" and met["ratio"] == times[32] / times[16]
    assert missed["status"] == "missed" and missed["wanted"] == "≤ 1e-09"
    assert absent["status"] == "not measured"
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.startswith("| model |") and "## Targets" in md
    assert "| impossible | g train 32 | g train 16 |" in md and "| missed |" in md

    # --models replaces the labels the targets name: a config error, unless --no-targets
    assert main(["bench", "--suite", str(path), "--models", "gpt:debug"]) == 2
    assert "no model labelled 'g'" in capsys.readouterr().err
    assert main(["bench", "--suite", str(path), "--models", "gpt:debug", "--no-targets"]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["targets"] == []


def test_paired_targets_retime_both_rows_in_alternation(monkeypatch):
    """A paired target's ratio comes from A, B, A, B, ... re-timings, not from the main run's rows."""
    from attnlab.bench import runner

    calls = []
    real = runner.ModelBench.measure

    def recording(self, kind, length, timing_only=False):
        calls.append((self.identity["model"], kind, length, timing_only))
        return real(self, kind, length, timing_only)

    monkeypatch.setattr(runner.ModelBench, "measure", recording)
    models = [{"label": "a", "model": "gpt", "preset": "debug"}, {"label": "b", "model": "leap", "preset": "debug"}]
    cfg = BenchConfig(models=models, d_model=32, n_layers=1, seq_lens=[16], parts=["train"], batch_size=1,
                      warmup=0, repeats=1, gemm_size=32, progress=False, paired_rounds=2, targets=[
                          {"name": "p", "value": "a train 16", "over": "b train 16", "max": 1e9, "paired": True},
                          {"name": "u", "value": "a train 16", "over": "b train 16", "max": 1e9}])
    result = run_bench(cfg)
    assert calls[:2] == [("a", "train", 16, False), ("b", "train", 16, False)]  # the main run
    assert calls[2:] == [("a", "train", 16, True), ("b", "train", 16, True)] * 2  # then alternating rounds
    paired, unpaired = result.targets
    rows = {r["model"]: r["time_median_s"] for r in result.rows}
    assert paired["paired"] and not unpaired["paired"]
    assert unpaired["ratio"] == rows["a"] / rows["b"]
    assert paired["ratio"] == paired["value"] / paired["over"] and paired["value"] != rows["a"]
