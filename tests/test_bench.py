"""attnlab bench / compare: harness logic on tiny models (nothing here asserts on timings)."""

import csv
import json
import re
import sys

import pytest
import torch

from attnlab.compare import CompareConfig
from attnlab.bench.flops import count_flops
from attnlab.bench.memory import peak_memory_bytes
from attnlab.bench.report import ROW_FIELDS
from attnlab.bench.runner import BenchConfig, _n_steps, resolve_models, run_bench
from attnlab.bench.specs import count_params, parse_model_specs, resolve
from attnlab.bench.targets import check_target_labels, parse_targets
from attnlab.bench.suites import available_suites, load_suite
from attnlab.bench.timing import Timing
from attnlab.errors import ConfigError
from attnlab.models import GPTConfig, GPTForCausalLM, build_config, create_model
from attnlab.models.registry import FAMILIES, Family

TINY = ["--models", "gpt:debug", "--seq-lens", "16", "32", "--contexts", "16", "--decode-tokens", "2",
        "--batch-size", "2", "--warmup", "0", "--repeats", "2", "--gemm-size", "64", "--no-progress"]


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
def test_bench_writes_documented_fields_table_and_plots(tmp_path, run_cli):
    out = tmp_path / "bench"
    code, stdout, err = run_cli("bench", *TINY, "--out-dir", str(out))
    assert code == 0, err
    assert "gpt:debug" in stdout and "recompute" in stdout
    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"config", "env", "peak_flops", "results", "skipped", "targets"} and data["targets"] == []
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
    # the KV cache after 16 tokens of context and 2 decoded: layers × (K, V) × batch × heads × 18 × head_dim fp32
    (decode,) = [r for r in rows if r["kind"] == "decode_cache"]
    assert decode["cache_bytes"] == 2 * 2 * 2 * 4 * 18 * 8 * 4
    assert all(r["cache_bytes"] is None for r in rows if r["kind"] != "decode_cache")
    assert all(r["implementation"] == "attnlab" for r in rows)
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
    assert {"cpu-small", "gpu-full", "compare-shakespeare", "leap", "dat", "dat-343m", "lsw", "moa"} <= set(names)
    for name in names:
        try:
            cfg = BenchConfig.from_dict(load_suite(name, "bench"))
        except ConfigError as exc:
            assert "compare suite" in str(exc)
            CompareConfig.from_dict(load_suite(name, "compare"))
            continue
        specs, skipped = parse_model_specs(cfg.models, cfg.preset)  # models, per-model options
        check_target_labels(parse_targets(cfg.targets), [s.label for s in specs] + [r.spec.label for r in skipped])
        assert cfg.out_dir == f"benchmarks/results/{name}"


def test_family_suites_schedule_what_the_issues_ask():
    leap = BenchConfig.from_dict(load_suite("leap", "bench"))
    specs = {s.label: s for s in parse_model_specs(leap.models)[0]}
    assert leap.plan(specs["leap-k4"]).jobs() == [("train", 4096), ("train", 16384)]
    assert leap.plan(specs["gpt"]).jobs()[-1] == ("decode_cache", 8192)
    assert {t.get("max") for t in leap.targets} >= {20, 1.3}
    theirs = [t for t in leap.targets if t["value"].startswith("leap-transformer")]  # ours ≥ 1.5× theirs
    assert [(t["over"], t["min"], t["paired"]) for t in theirs] == [
        (f"leap-paper train {n}", 1.5, True) for n in (512, 2048, 8192)]
    assert specs["leap-transformer"].reference == "leap-transformer" and specs["leap-transformer"].family == "leap"
    dat = BenchConfig.from_dict(load_suite("dat", "bench"))
    authors = [s for s in parse_model_specs(dat.models)[0] if s.label == "dat-authors"][0]
    assert authors.reference == "dual-attention" and authors.family == "dat"
    assert all(t["min"] == 1.5 and t["value"].split()[0] in ("dat-authors", "dat-released-authors")
               for t in dat.targets)
    released = BenchConfig.from_dict(load_suite("dat-343m", "bench"))  # the released 343M's own layer shape
    ours, theirs = [r.config for r in resolve_models(released)[0] if r.spec.label in ("dat", "dat-authors")]
    preset = build_config("dat", "343m", n_layers=12).to_dict()
    assert ours.to_dict() == theirs.to_dict() == preset
    assert [(t["value"], t["over"]) for t in released.targets] == [
        ("dat-authors train 512", "dat train 512"), ("dat-authors train 1024", "dat train 1024")]
    lsw = BenchConfig.from_dict(load_suite("lsw", "bench"))
    assert [s.label for s in parse_model_specs(lsw.models)[0] if lsw.plan(s).train_with_cache] == [
        "lsw-xl", "lsw-xl-simctg"]


# ------------------------------------------------------------------------------ per-model options
def tiny_config(**values) -> BenchConfig:
    base = dict(d_model=32, n_layers=1, n_heads=4, seq_lens=[16], contexts=[16], decode_tokens=2, batch_size=2,
                warmup=0, repeats=1, gemm_size=32, progress=False)
    return BenchConfig(**{**base, **values})


def test_a_model_entry_replaces_the_runs_measurement_options():
    short = {"label": "short", "model": "gpt", "preset": "debug", "seq_lens": [8], "parts": ["train"], "batch_size": 1}
    cfg = tiny_config(models=["gpt:debug", short], seq_lens=[16, 32], parts=["train", "decode"], no_cache=False)
    resolved, _ = resolve_models(cfg)
    assert [r.config.block_size for r in resolved] == [32, 8]  # each model long enough for its own lengths
    assert _n_steps(cfg, resolved) == 3 + 1  # the progress bar counts each model's own rows
    result = run_bench(cfg)
    got = [(r["model"], r["kind"], r["seq_len"], r["batch_size"]) for r in result.rows]
    assert got == [("gpt:debug", "train", 16, 2), ("gpt:debug", "train", 32, 2), ("gpt:debug", "decode_cache", 16, 2),
                   ("short", "train", 8, 1)]
    assert all(r["status"] == "ok" for r in result.rows)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"model": "gpt", "seq_len": [8]}, "unknown key(s) seq_len"),
        ({"model": "gpt", "label": "g", "seq_lens": [0]}, "model 'g': seq_lens must be"),
        ({"model": "gpt", "label": "g", "parts": ["fly"]}, "model 'g': parts must be"),
        ({"model": "gpt", "label": "g", "train_with_cache": "yes"}, "model 'g': train_with_cache must be"),
    ],
)
def test_bad_model_entries_are_one_line_config_errors(entry, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_model_specs([entry])


def test_train_with_cache_carries_the_memory_from_step_to_step():
    base = {"model": "lsw", "preset": "debug", "model_overrides": {"mem_len": 16, "d_emb": 32}, "parts": ["train"]}
    cfg = tiny_config(models=[{**base, "label": "plain"}, {**base, "label": "xl", "train_with_cache": True}])
    plain, xl = run_bench(cfg).rows
    assert plain["status"] == xl["status"] == "ok"
    # the same model and tokens; with the memory, queries also attend to the previous step's 16 keys
    assert xl["params"] == plain["params"] and xl["flops"] > plain["flops"]
    assert xl["peak_mem_bytes"] > plain["peak_mem_bytes"]


@pytest.mark.parametrize(
    "overrides, message",
    [({"mem_len": 0}, "needs a model with XL memory"), ({"pos": "learned"}, "needs relative positions")],
)
def test_train_with_cache_needs_a_streamable_memory(overrides, message):
    entry = {"model": "lsw", "preset": "debug", "label": "m", "model_overrides": overrides, "train_with_cache": True}
    with pytest.raises(ConfigError, match=message):
        run_bench(tiny_config(models=[entry]))


# ----------------------------------------------------------------------------------- references
def test_a_reference_that_is_not_installed_is_skipped_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "dual_attention.language_models", None)  # import fails as if absent
    cfg = tiny_config(models=["gpt:debug", "dual-attention:debug"], parts=["train"])
    result = run_bench(cfg)
    assert [r["model"] for r in result.rows] == ["gpt:debug"]
    (skipped,) = result.skipped
    assert skipped["model"] == "dual-attention:debug"
    assert skipped["reason"].endswith("install it with: pip install --no-deps dual-attention==0.0.7 einops")


def test_the_authors_dat_runs_beside_ours_at_the_same_config():
    pytest.importorskip("einops")
    pytest.importorskip("dual_attention.language_models")
    models = ["dat:debug", {"label": "dat-authors", "model": "dual-attention", "preset": "debug"}]
    targets = [{"name": "theirs / ours", "value": "dat-authors train 16", "over": "dat:debug train 16", "min": 0},
               {"name": "their decode", "value": "dat-authors decode 16", "over": "dat:debug decode 16", "max": 9}]
    result = run_bench(tiny_config(models=models, targets=targets))
    rows = {(r["model"], r["kind"]): r for r in result.rows}
    assert len(rows) == 8 and not result.skipped
    ours, theirs = rows["dat:debug", "train"], rows["dat-authors", "train"]
    assert theirs["status"] == "ok" and theirs["implementation"] == "dual-attention 0.0.7"
    assert theirs["family"] == "dat" and theirs["d_model"] == ours["d_model"] == 32
    # their model: no query biases and two block-diagonal output projections, so fewer parameters
    config = build_config("dat", "debug", d_model=32, n_layers=1, n_heads=4, vocab_size=256, block_size=18,
                          dropout=0.0)
    assert theirs["params"] == count_params(config, "dat", "dual-attention") < ours["params"]
    assert rows["dat-authors", "decode_cache"]["status"] == "n/a: no KV cache in dual-attention"
    assert rows["dat-authors", "decode_nocache"]["status"] == "ok"
    met, not_measured = result.targets
    assert met["status"] == "met" and met["ratio"] == theirs["time_median_s"] / ours["time_median_s"]
    assert not_measured["status"] == "not measured" and "n/a: no KV cache" in not_measured["reason"]


def test_leap_transformer_runs_beside_ours_at_the_same_dimensions():
    pytest.importorskip("leap")
    models = ["leap:debug", {"label": "theirs", "model": "leap-transformer", "preset": "debug",
                             "model_overrides": {"window_sizes": [16, 4, None]}},
              {"label": "rope", "model": "leap-transformer", "preset": "debug", "model_overrides": {"pos": "rope"}}]
    targets = [{"name": "theirs / ours", "value": "theirs train 16", "over": "leap:debug train 16", "min": 0}]
    result = run_bench(tiny_config(models=models, match="none", targets=targets))
    rows = {(r["model"], r["kind"]): r for r in result.rows}
    theirs = rows["theirs", "train"]
    assert theirs["status"] == "ok" and theirs["implementation"] == "leap-transformer 1.0.1"
    assert theirs["family"] == "leap" and theirs["d_model"] == rows["leap:debug", "train"]["d_model"] == 32
    assert rows["theirs", "decode_cache"]["status"] == "n/a: no recurrent state in leap-transformer"
    assert rows["theirs", "decode_nocache"]["status"] == "ok"
    (skipped,) = result.skipped
    assert skipped["model"] == "rope" and "no leap-transformer twin" in skipped["reason"] and "pos='rope'" in skipped["reason"]
    assert result.targets[0]["status"] == "met"


def test_leap_transformer_gets_our_windows_and_context():
    from attnlab.models.leap.reference import reference_kwargs

    config = build_config("leap", "paper", window_sizes=[2048, 4, 8, 16, None, 4], block_size=8192, vocab_size=256)
    kwargs = reference_kwargs(config)
    assert kwargs["window_sizes"] == [2048, 4, 8, 16, 8192, 4] and kwargs["n_positions"] == 8192
    assert reference_kwargs(build_config("leap", "debug", use_local_att=False))["use_local_att"] is False


def test_hf_gpt2_is_our_gpt_baseline_in_transformers():
    """Our GPT's weights in transformers' GPT2LMHeadModel (Conv1D stores Wᵀ) give the same logits."""
    from attnlab.models.gpt.reference import build_gpt2

    config = build_config("gpt", "debug", vocab_size=256, dropout=0.0)
    torch.manual_seed(0)
    ours = create_model("gpt", "debug", vocab_size=256, dropout=0.0).double().eval()
    theirs = build_gpt2(config).double().eval()
    backbone, sd = ours.model, {}
    sd["transformer.wte.weight"] = backbone.embed_tokens.weight
    sd["transformer.wpe.weight"] = backbone.embed_positions.weight
    for i, block in enumerate(backbone.layers):
        p = f"transformer.h.{i}."
        for name, module in [("ln_1", block.mixer_norm), ("ln_2", block.ffn_norm)]:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = module.weight, module.bias
        for name, linear in [("attn.c_attn", block.mixer.qkv), ("attn.c_proj", block.mixer.out),
                             ("mlp.c_fc", block.ffn.up), ("mlp.c_proj", block.ffn.down)]:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = linear.weight.T, linear.bias
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = backbone.norm.weight, backbone.norm.bias
    theirs.load_state_dict(sd, strict=False)
    theirs.tie_weights()
    ids = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids, use_cache=False).logits, ours(ids).logits, rtol=1e-10, atol=1e-10)
    with pytest.raises(ConfigError, match="no GPT-2 twin.*pos='rope'"):
        build_gpt2(build_config("gpt", "debug", pos="rope"))


# ----------------------------------------------------------------------------------------- compare
def test_compare_trains_two_models_and_writes_the_report(tmp_path, run_cli):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be, or not to be, that is the question:\nwhether 'tis nobler in the mind to suffer\n" * 60)
    out = tmp_path / "report"
    args = ["compare", "--models", "gpt:debug", "gpt:debug:pos=rope", "--data", str(corpus), "--max-steps", "3",
            "--batch-size", "2", "--block-size", "32", "--warmup-steps", "1", "--eval-interval", "2",
            "--eval-tokens", "256", "--sample-tokens", "12", "--sample-prompt", "to be", "--no-progress",
            "--out-dir", str(out)]
    code, stdout, err = run_cli(*args)
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
    assert run_cli(*args)[0] == 0
    code, _, err = run_cli(*args[:-2], "--seed", "7", "--out-dir", str(out))
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
        (["compare", "--models", "dual-attention:debug"], "runs in `attnlab bench` only"),
        (["bench", *TINY, "--models", "dual-attention:debug:bias=false"], "nothing to benchmark (dual-attention"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, run_cli):
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
