"""attnlab bench / compare: harness logic on tiny models (nothing here asserts on timings)."""

import csv
import json

import pytest
import torch

from attnlab.cli import main
from attnlab.bench.compare import CompareConfig
from attnlab.bench.flops import count_flops
from attnlab.bench.memory import peak_memory_bytes
from attnlab.bench.report import ROW_FIELDS
from attnlab.bench.runner import BenchConfig, run_bench
from attnlab.bench.specs import count_params, parse_model_specs, resolve
from attnlab.bench.suites import available_suites, load_suite
from attnlab.bench.timing import Timing
from attnlab.errors import ConfigError
from attnlab.models import GPTConfig, GPTForCausalLM, create_model
from attnlab.models.registry import FAMILIES, Family

TINY = ["--models", "gpt:debug", "--seq-lens", "16", "32", "--contexts", "16", "--decode-tokens", "2",
        "--batch-size", "2", "--warmup", "0", "--repeats", "2", "--gemm-size", "64", "--no-progress"]


def run_main(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("bias", [True, False])
def test_linear_flops_are_two_per_multiply_add(bias):
    B, T, n_in, n_out = 3, 5, 7, 11
    layer = torch.nn.Linear(n_in, n_out, bias=bias)
    x = torch.randn(B, T, n_in, requires_grad=True)
    assert count_flops(lambda: layer(x)) == 2 * B * T * n_in * n_out
    # backward: the input gradient and the weight gradient are one such product each
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * B * T * n_in * n_out


def test_debug_gpt_flops_match_the_formula():
    model = create_model("gpt", "debug")  # d 32, 2 layers, 4 heads, GELU MLP 4d, vocab 256, tied head
    B, T = 2, 16
    d, L, V, N = model.config.d_model, model.config.n_layers, model.config.vocab_size, 2 * 16
    linear = L * 2 * N * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + 2 * N * d * V
    attention = L * 2 * (2 * B * T * T * d)  # QKᵀ and PV, full T×T (causal half not subtracted)
    ids = torch.randint(0, V, (B, T))
    assert count_flops(lambda: model(input_ids=ids, use_cache=False)) == linear + attention
    step = count_flops(lambda: model(input_ids=ids, shift_labels=ids, use_cache=False).loss.backward())
    # backward: 2× the matmuls; attention backward recomputes scores and takes 4 more products (2.5×)
    assert step == 3 * linear + attention + attention * 5 // 2


# ---------------------------------------------------------------------------------- timing, memory
def test_timing_summary():
    t = Timing((5.0, 1.0, 3.0, 2.0, 4.0))
    assert (t.median, t.q1, t.q3) == (3.0, 2.0, 4.0)
    d = t.scaled(0.5).to_dict()
    assert d["time_min_s"] == 0.5 and d["time_max_s"] == 2.5 and d["repeats"] == 5


def test_cpu_peak_memory_counts_freed_temporaries():
    resident = torch.zeros(1000)  # 4,000 bytes live before the call

    def fn():
        a = torch.ones(250_000)  # 1 MB
        b = torch.ones(500_000)  # 2 MB, both live: 3 MB
        del a
        c = torch.ones(250_000)  # 1 MB, 3 MB live again
        return b, c

    peak = peak_memory_bytes(fn, torch.device("cpu"), [resident, resident[:10]])
    assert 3_004_000 <= peak < 3_004_000 + 64 * 1024


# ------------------------------------------------------------------------------------ bench output
def test_bench_writes_documented_fields_table_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    code, stdout, err = run_main(capsys, "bench", *TINY, "--out-dir", str(out))
    assert code == 0, err
    assert "gpt:debug" in stdout and "recompute" in stdout
    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"config", "env", "peak_flops", "results", "skipped"}
    assert set(data["peak_flops"]) == {"float32", "bfloat16"}
    rows = data["results"]
    assert {r["kind"] for r in rows} == {"train", "prefill", "decode_cache", "decode_nocache"}
    assert len(rows) == 2 + 2 + 1 + 1
    for row in rows:
        assert set(ROW_FIELDS) <= set(row), set(ROW_FIELDS) - set(row)
        assert row["status"] == "ok" and row["repeats"] == 2 and row["threads"] >= 1
        assert row["time_min_s"] <= row["time_median_s"] <= row["time_max_s"]
        assert row["flops"] > 0 and row["mfu"] > 0
        assert (row["peak_mem_bytes"] is not None) == (row["kind"] in ("train", "prefill"))
    train = [r for r in rows if r["kind"] == "train"]
    assert train[0]["peak_mem_bytes"] < train[1]["peak_mem_bytes"]  # longer sequence, more activations
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ROW_FIELDS and len(list(reader)) == len(rows)
    for name in ("train_step_time", "train_peak_memory", "prefill_time", "decode_latency", "summary"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.md").read_text().startswith("| model |")


class PickyConfig(GPTConfig):
    """A stand-in for a family whose config rejects some sizes."""

    model_type = "attnlab_test_picky"

    def check(self):
        super().check()
        if self.d_model != 32:
            raise ConfigError(f"picky: d_model must be 32, got {self.d_model}")


class PickyModel(GPTForCausalLM):
    config_class = PickyConfig


def test_a_family_rejecting_an_override_is_skipped_not_fatal(monkeypatch):
    monkeypatch.setitem(FAMILIES, "picky", Family("picky", PickyConfig, PickyModel, {"debug": dict(d_model=32)}))
    cfg = BenchConfig(models=["gpt:debug", "picky:debug"], d_model=48, n_layers=1, n_heads=4, seq_lens=[8], contexts=[8],
                      parts=["prefill"], warmup=0, repeats=1, gemm_size=32, progress=False)
    result = run_bench(cfg)
    assert {r["model"] for r in result.rows} == {"gpt:debug"}
    assert result.rows[0]["d_model"] == 48
    assert result.skipped == [{"model": "picky:debug", "reason": "picky: d_model must be 32, got 48"}]


def test_matched_parameter_count_changes_width_only():
    specs, _ = parse_model_specs(["gpt:debug", "gpt:debug:ffn=swiglu,d_ff=512"])
    dims = {"d_model": 64, "n_layers": 2, "n_heads": 4}
    ref, other = resolve(specs, "params", dims=dims, fixed={"vocab_size": 256, "block_size": 64})
    assert ref.config.d_model == 64 and ref.params == count_params(ref.config, "gpt")
    assert other.config.d_model < 64 and other.config.n_layers == 2 and other.config.n_heads == 4
    assert abs(other.params - ref.params) / ref.params < 0.1
    same = resolve(specs, "dims", dims=dims, fixed={"vocab_size": 256, "block_size": 64})
    assert [r.config.d_model for r in same] == [64, 64]


def test_every_checked_in_suite_is_valid():
    names = available_suites()
    assert {"cpu-small", "gpu-full", "compare-shakespeare"} <= set(names)
    for name in names:
        try:
            BenchConfig.from_dict(load_suite(name, "bench"))
        except ConfigError as exc:
            assert "compare suite" in str(exc)
            CompareConfig.from_dict(load_suite(name, "compare"))


# ----------------------------------------------------------------------------------------- compare
def test_compare_trains_two_models_and_writes_the_report(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be, or not to be, that is the question:\nwhether 'tis nobler in the mind to suffer\n" * 60)
    out = tmp_path / "report"
    args = ["compare", "--models", "gpt:debug", "gpt:debug:pos=rope", "--data", str(corpus), "--max-steps", "3",
            "--batch-size", "2", "--block-size", "32", "--warmup-steps", "1", "--eval-interval", "2",
            "--eval-tokens", "256", "--sample-tokens", "12", "--sample-prompt", "to be", "--no-progress",
            "--out-dir", str(out)]
    code, stdout, err = run_main(capsys, *args)
    assert code == 0, err
    for name in ("report.md", "report.html", "curves.png", "results.json", "results.csv", "compare_config.json"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "gpt:debug:pos=rope" in md and "## Samples" in md and "(curves.png)" in md
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["label"] for r in results] == ["gpt:debug", "gpt:debug:pos=rope"]
    for r in results:
        assert r["error"] is None and r["steps"] == 3 and r["tokens"] == 3 * 2 * 32
        assert r["val_bpb"] > 0 and r["params"] > 0 and r["peak_mem_bytes"] > 0
    samples = json.loads((out / "results.json").read_text())["samples"]
    assert all(text.startswith("to be") for text in samples.values())
    # the same command again reuses the finished runs; other settings in the same directory are refused
    assert run_main(capsys, *args)[0] == 0
    code, _, err = run_main(capsys, *args[:-2], "--seed", "7", "--out-dir", str(out))
    assert code == 2 and "other settings" in err


# ---------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--models", "nope"], "unknown model family"),
        (["bench", "--models", "gpt:galactic"], "unknown preset"),
        (["bench", "--suite", "no-such-suite"], "unknown suite"),
        (["bench", "--suite", "compare-shakespeare"], "is a compare suite"),
        (["bench", "--seq-lens", "0"], "seq_lens must be"),
        (["bench", "--dtype", "float16"], "invalid choice"),
        (["bench", "--models", "gpt:debug:n_heads"], "key=value"),
        (["bench", *TINY, "--d-model", "30"], "nothing to benchmark"),
        (["compare", "--suite", "cpu-small"], "is a bench suite"),
        (["compare", "--models", "nope:tiny"], "unknown model family"),
        (["compare", "--train", "bogus=1"], "unknown training option"),
        (["compare", "--train", "out_dir=x"], "cannot be shared"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, capsys):
    code, out, err = run_main(capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
