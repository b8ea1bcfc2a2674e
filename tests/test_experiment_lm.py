"""The language-modelling experiments ``lm-dat`` and ``lm-leap``: plans, configurations, one run, the runner."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

import attnlab
from attnlab.errors import ConfigError
from attnlab.experiments.base import RunSpec
from attnlab.experiments.lm import (
    LEAP_PUBLISHED,
    LM_DAT,
    LM_LEAP,
    LMDat,
    LMLeap,
    StepProgress,
    held_out_metrics,
    matched_d_ff,
)

TEXT = "to be, or not to be, that is the question:\nwhether 'tis nobler in the mind to suffer\n" * 60


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def _built_parameters(family: str, preset: str, overrides: dict, **extra) -> int:
    """An independent count: build the real model (not on the meta device) and sum its unique parameters."""
    torch.manual_seed(0)
    model = attnlab.create_model(family, preset, **overrides, **extra)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("experiment, arms",
                         [(LM_DAT, ["gpt", "dat"]), (LM_LEAP, ["leap-windowed", "gpt", "leap-global"])])
@pytest.mark.parametrize("scale", ["smoke", "laptop", "paper"])
def test_plan_is_every_arm_for_every_seed(experiment, arms, scale):
    specs = experiment.plan(scale, 3)
    assert [(s.arm, s.seed) for s in specs] == [(a, seed) for seed in range(3) for a in arms]
    assert len({s.key for s in specs}) == len(specs) and all(s.params == {} for s in specs)
    claims = experiment.claims(scale)
    assert claims and all({c.better, c.worse} <= set(arms) and not c.higher_is_better for c in claims)
    assert set(experiment.configs(scale)["arms"]) == set(arms)


def test_plan_refuses_sizes_unknown_scales_and_no_seeds():
    with pytest.raises(ConfigError, match="no grid of sizes"):
        LM_DAT.plan("laptop", 3, [100])
    with pytest.raises(ConfigError, match="no scale 'huge'"):
        LM_LEAP.plan("huge", 3)
    with pytest.raises(ConfigError, match="seeds must be at least 1"):
        LM_DAT.plan("laptop", 0)


def test_dat_and_gpt_have_matched_parameter_counts():
    for scale, tolerance in (("laptop", 0.01), ("smoke", 0.01), ("paper", 0.03)):
        arms = LM_DAT.configs(scale)["arms"]
        gpt, dat = arms["gpt"]["parameters"], arms["dat"]["parameters"]
        assert abs(gpt - dat) / dat < tolerance, (scale, gpt, dat)
    # the laptop counts are those of the real models (byte vocabulary, 256-token context)
    arms = LM_DAT.configs("laptop")["arms"]
    for arm in arms.values():
        assert arm["parameters"] == _built_parameters(arm["family"], arm["preset"], arm["overrides"], vocab_size=257)
    # the paper scale is the paper's pair: the released DAT 343M and a 353M Transformer
    paper = LM_DAT.configs("paper")["arms"]
    assert paper["dat"]["preset"] == "343m" and round(paper["gpt"]["parameters"] / 1e6) == 354
    assert round(paper["dat"]["parameters"] / 1e6) == 345


def test_matched_d_ff_is_the_closest_width():
    overrides = {"pos": "rope", "vocab_size": 257, "block_size": 256}
    target = _built_parameters("dat", "tiny", {"pos": "rope"}, vocab_size=257)
    d_ff = matched_d_ff(target, "gpt", "tiny", overrides)
    distance = {d: abs(_built_parameters("gpt", "tiny", {**overrides, "d_ff": d}) - target)
                for d in (d_ff - 1, d_ff, d_ff + 1)}
    assert distance[d_ff] == min(distance.values()) and distance[d_ff] / target < 1e-3


def test_leap_arms_share_dims_and_windows():
    arms = LM_LEAP.configs("laptop")["arms"]
    assert arms["leap-global"]["overrides"]["use_local_att"] is False
    assert "use_local_att" not in arms["leap-windowed"]["overrides"]
    windowed = attnlab.models.build_config("leap", "tiny", **arms["leap-windowed"]["overrides"])
    assert windowed.layer_windows == [4, 8, 16, None]  # k_l = 4·2^l, the last layer global
    gpt = attnlab.models.build_config("gpt", "tiny", **arms["gpt"]["overrides"])
    assert (gpt.d_model, gpt.n_layers, gpt.n_heads, gpt.pos) == (windowed.d_model, windowed.n_layers,
                                                                 windowed.n_heads, windowed.pos)
    paper = LM_LEAP.configs("paper")
    assert paper["epochs"] == 25 and paper["train"]["block_size"] == 2048 and paper["test"]["hf_split"] == "test"
    assert [c.metric for c in LM_LEAP.claims("paper")] == ["test_ppl", "test_ppl"]
    assert {arm: LM_LEAP.reference(arm, {}, "test_ppl") for arm in arms} == LEAP_PUBLISHED
    assert LM_LEAP.reference("gpt", {}, "val_bpb") is None


def test_one_run_gives_bits_per_byte_and_a_curve_and_keeps_no_weights(tmp_path, corpus):
    experiment = LMLeap(data=corpus)
    seen: list[float] = []
    result = experiment.run(RunSpec("leap-windowed", 3), "smoke", tmp_path / "run", seen.append)
    final = result.final
    assert set(final) == {"val_bpb", "val_loss", "train_loss"} and all(math.isfinite(v) for v in final.values())
    # one document of plain bytes: every validation token is one byte, so bits/byte = nats/token / ln 2
    assert final["val_bpb"] == pytest.approx(final["val_loss"] / math.log(2), rel=1e-6)
    assert 0 < final["val_bpb"] < 8.1  # about a uniform guess over 257 ids after 4 steps, not more
    curve = result.curves["val_bpb"]
    per_step = 2 * 32
    assert [x for x, _ in curve] == [2 * per_step, 4 * per_step] and curve[-1][1] == final["val_bpb"]
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1
    run_dir = tmp_path / "run" / "train"
    assert json.loads((run_dir / "train_config.json").read_text())["seed"] == 3
    assert not (run_dir / "checkpoints").exists() and not list(run_dir.glob("*.safetensors"))
    assert "step" in (tmp_path / "run" / "train.log").read_text()
    # another seed trains another model
    other = experiment.run(RunSpec("leap-windowed", 4), "smoke", tmp_path / "run4", lambda f: None)
    assert other.final["val_loss"] != final["val_loss"]


def test_step_progress_reads_the_trainer_lines():
    seen: list[float] = []
    log = io.StringIO()
    out = StepProgress(log, 40, seen.append)
    out.write("training gpt/tiny ...\nstep     10  loss 3.1  lr 1e-3  900 tok/s\nstep  ")
    out.write("   20 val loss 2.5  ppl 12  bits/byte 3.6\n")
    out.write("step     40  loss 2.0\n")
    assert seen == [0.25, 0.5, 1.0] and log.getvalue().startswith("training gpt/tiny")


def test_held_out_metrics_join_the_two_parts_of_the_split(monkeypatch, tmp_path):
    parts = {"train": {"loss": 2.0, "bpb": 2.0 / math.log(2) / 2, "tokens": 300},  # 2 bytes per token
             "val": {"loss": 4.0, "bpb": 4.0 / math.log(2), "tokens": 100}}  # 1 byte per token
    monkeypatch.setattr(attnlab, "evaluate", lambda run, split, **kw: parts[split])
    got = held_out_metrics(tmp_path, {"data": "x"}, "cpu")
    nll = 2.0 * 300 + 4.0 * 100
    assert got["test_loss"] == pytest.approx(nll / 400)
    assert got["test_ppl"] == pytest.approx(math.exp(nll / 400))
    assert got["test_bpb"] == pytest.approx(nll / math.log(2) / (600 + 100))


def test_the_runner_drives_lm_dat_and_judges_the_claim(tmp_path, corpus):
    from attnlab.experiments.runner import run_experiment

    experiment = LMDat(data=corpus)
    out = tmp_path / "lm-dat"
    outcome = run_experiment(experiment, scale="smoke", seeds=2, out_dir=out, show_progress=False)
    assert outcome.trained == 4
    results = json.loads((out / "results.json").read_text())
    (claim,) = results["claims"]
    assert claim["verdict"] in ("holds", "does not hold", "inconclusive")
    assert len(claim["better_values"]) == len(claim["worse_values"]) == 2
    assert json.loads((out / "configs.json").read_text())["arms"]["gpt"]["parameters"] > 0
    again = run_experiment(experiment, scale="smoke", seeds=2, out_dir=out, show_progress=False)
    assert (again.trained, again.skipped) == (0, 4)
