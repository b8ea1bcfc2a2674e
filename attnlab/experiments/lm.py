"""Language-modelling experiments: the GPT baseline against DAT (``lm-dat``) and against LEAP (``lm-leap``).

Every run trains through attnlab's own trainer (``attnlab.training.train``: AdamW, warmup then cosine, exact
resume) and is scored by what that trainer validates, **bits per byte** on the held-out tail of the corpus, so
models are compared on one scale whatever their tokenizer. The result of a run is its last validation
(``val_bpb``, ``val_loss``), its last logged training loss and the validation curve against tokens seen.

Scales:

* ``laptop`` — the built-in Shakespeare corpus (offline once cached), byte tokens, models of GPT ``tiny``'s
  width and depth, a few hundred steps: about 1–1.5 minutes per run on an idle 2-core CPU.
* ``paper`` — the publications' own setups, for GPUs and with network access for the data
  (Hugging Face hub through attnlab's data sources):

  - DAT (Altabaa & Lafferty, arXiv 2405.16727; the authors' ``experiments/fineweb/pretrain.py`` and the
    released DAT-LMs): FineWeb-Edu ``sample-10BT``, GPT-2 tokenizer (vocabulary padded to 50,304), context
    1024, 524,288 tokens per step for 19,073 steps (10 B tokens), AdamW (0.9, 0.95), peak 6e-4 after 715
    warmup steps, cosine to 6e-5, weight decay 0.1, bf16; DAT = the released 343M (``dat:343m``: d_model 1024,
    24 layers, 8 self-attention + 8 relational heads, 64 relations, GQA, RoPE, frozen symbol library) against
    the paper's Transformer of the same width and depth (16 heads, no biases, RoPE): 353.6 M parameters.
  - LEAP (leap-transformer's ``FastLM`` experiment): Wikitext-2, the T5 tokenizer, context 2048, d_model
    128, 6 layers, 4 heads, dropout 0.1, batches of 2 sequences, 25 epochs, AdamW (0.9, 0.999) at 5e-4
    decayed to 0 (cosine here; theirs was linear), weight decay 0.01, gradient clipping 1, mixed precision;
    windows 4, 8, 16, 32, 64 and a global last layer (``leap:paper``) vs every layer global vs GPT-2 of the
    same dims. Their published numbers are **test** perplexities, so at this scale each run is also scored
    on Wikitext-2's test split (``test_ppl``, ``test_bpb``) and the claims are judged on that.
* ``smoke`` — debug sizes and a few steps, seconds: for tests of the pipeline, not for conclusions.

The runner (``attnlab.experiments.runner``) plans the runs, skips finished ones, aggregates seeds with
``attnlab.stats`` and judges the claims. A run trains in ``<run folder>/train`` and resumes from its
checkpoint there when it was interrupted; once finished, checkpoints are deleted (and, except at paper
scale, the weights), keeping the metrics, configuration and log.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .base import Claim, Experiment, Progress, RunResult, RunSpec

LN2 = math.log(2.0)
BYTE_VOCAB = 257  # attnlab's byte tokenizer: 256 bytes + <|endoftext|>
T5_VOCAB = 32100  # len() of the T5 tokenizer (32,000 pieces + 100 sentinels), as leap-transformer sizes it
TRAIN_DIR = "train"  # the trainer's run directory inside the runner's run folder
# What a finished laptop/smoke run keeps of its training directory (everything else is weights or tokenizer).
KEEP = ("metrics.jsonl", "run_info.json", "train_config.json", "config.json")


@dataclass(frozen=True)
class Arm:
    """One model of an experiment: an attnlab family and preset with config overrides."""

    family: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Setup:
    """Everything one scale of an experiment trains with: the arms and the training options they share
    (``TrainConfig`` fields), plus, for Wikitext-2 at paper scale, epochs instead of a step count."""

    arms: dict[str, Arm]
    train: dict[str, Any]
    epochs: float | None = None  # paper-scale LEAP: max_steps = ceil(epochs · training tokens / tokens per step)
    test: dict[str, Any] | None = None  # paper-scale LEAP: the held-out split scored after training
    keep_weights: bool = False
    notes: dict[str, str] = field(default_factory=dict)


# Shared by every laptop run: the compare-shakespeare schedule (benchmarks/suites/compare-shakespeare.yaml).
LAPTOP_TRAIN = dict(data="shakespeare", tokenizer="byte", batch_size=16, block_size=256, warmup_steps=50, lr=2e-3,
                    min_lr=2e-4, weight_decay=0.1, eval_interval=50, eval_tokens=65536, dtype="float32")
SMOKE_TRAIN = dict(data="shakespeare", tokenizer="byte", batch_size=2, block_size=32, max_steps=4, warmup_steps=1,
                   lr=2e-3, min_lr=2e-4, weight_decay=0.1, eval_interval=2, eval_tokens=512, dtype="float32")


def count_params(family: str, preset: str, overrides: dict[str, Any]) -> int:
    """Parameters of a family/preset with overrides, counted on the meta device (no memory, milliseconds)."""
    from ..bench.specs import count_params as count
    from ..models import build_config

    return count(build_config(family, preset, **overrides), family)


def matched_d_ff(target: int, family: str, preset: str, overrides: dict[str, Any]) -> int:
    """The FFN width whose model has the parameter count closest to ``target``. The count is affine in
    ``d_ff`` (two matrices and a bias per layer), so two counts give the slope and the solution is rounded."""
    low, high = 256, 512
    at_low = count_params(family, preset, {**overrides, "d_ff": low})
    at_high = count_params(family, preset, {**overrides, "d_ff": high})
    per_unit = (at_high - at_low) / (high - low)
    return max(1, round(low + (target - at_low) / per_unit))


class LanguageModelling(Experiment):
    """Shared machinery of ``lm-dat`` and ``lm-leap``: arms trained by ``attnlab.training.train``."""

    metrics = {"val_bpb": False, "val_loss": False, "train_loss": False}
    scales = ("laptop", "paper", "smoke")
    x_param = None
    curve_x = "training tokens"  # what the x of every curve counts

    def __init__(self, data: str | None = None):
        self.data = data  # replaces every scale's corpus (tests use a small local text)

    # -------------------------------------------------------------------------------------- to override
    def setup(self, scale: str) -> Setup:
        raise NotImplementedError

    def claims(self, scale: str, sizes: list[int] | None = None) -> list[Claim]:
        raise NotImplementedError

    # -------------------------------------------------------------------------------------- the contract
    def _setup(self, scale: str) -> Setup:
        self.check_scale(scale)
        s = self.setup(scale)
        if self.data is not None:
            s = Setup(s.arms, {**s.train, "data": self.data}, s.epochs, s.test, s.keep_weights, s.notes)
        return s

    def plan(self, scale: str, seeds: int, sizes: list[int] | None = None) -> list[RunSpec]:
        """Every arm once per seed 0 … seeds−1, seed by seed, so an interrupted experiment holds whole rounds."""
        if sizes:
            raise ConfigError(f"{self.name} has no grid of sizes; its budget is set by --scale")
        if seeds < 1:
            raise ConfigError(f"seeds must be at least 1, got {seeds}")
        arms = self._setup(scale).arms
        return [RunSpec(arm, seed) for seed in range(seeds) for arm in arms]

    def configs(self, scale: str) -> dict[str, Any]:
        """Each arm's family, preset, overrides and parameter count, the shared training options and notes."""
        return _configs(self, scale)

    def arm_parameters(self, scale: str) -> dict[str, int]:
        return {arm: a["parameters"] for arm, a in self.configs(scale)["arms"].items()}

    def run(self, spec: RunSpec, scale: str, out_dir: Path, progress: Progress) -> RunResult:
        """Train one arm with one seed (resuming its own checkpoint if an earlier attempt was interrupted)."""
        from rich.console import Console

        from ..training import train
        from ..training.checkpoint import latest_checkpoint
        from ..training.config import TrainConfig

        s = self._setup(scale)
        if spec.arm not in s.arms:
            raise ConfigError(f"{self.name} has no arm {spec.arm!r}; its arms are {', '.join(s.arms)}")
        arm = s.arms[spec.arm]
        run_dir = Path(out_dir) / TRAIN_DIR
        values = {**s.train, "model": arm.family, "preset": arm.preset, "model_overrides": dict(arm.overrides),
                  "seed": spec.seed, "out_dir": str(run_dir), "progress": False, "tensorboard": False,
                  "sample_tokens": 0, "device": self.device}
        if s.epochs is not None:
            values["max_steps"] = epoch_steps(values, s.epochs)
        tc = TrainConfig.from_dict(values)
        tc.resume = latest_checkpoint(run_dir) is not None
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(out_dir) / "train.log", "a") as log:
            console = Console(file=StepProgress(log, tc.max_steps, progress), width=120, color_system=None,
                              force_terminal=False, soft_wrap=True)
            result = train(tc, console)
        final, curves = read_metrics(run_dir)
        if s.test is not None:
            final.update(held_out_metrics(run_dir, s.test, self.device))
        progress(1.0)
        _tidy(run_dir, keep_weights=s.keep_weights)
        return RunResult(final=final, curves=curves, seconds=result.elapsed_s)


@functools.cache
def _configs_cached(setup_json: str) -> str:
    """Parameter counts build models on the meta device; the runner asks for the configs several times."""
    setup = json.loads(setup_json)
    arms = {}
    for label, arm in setup["arms"].items():
        overrides = dict(arm["overrides"])
        if "vocab_size" not in overrides and setup["train"].get("tokenizer") == "byte":
            overrides["vocab_size"] = BYTE_VOCAB
        if "block_size" not in overrides and setup["train"].get("block_size"):
            overrides["block_size"] = setup["train"]["block_size"]
        arms[label] = {"family": arm["family"], "preset": arm["preset"], "overrides": arm["overrides"],
                       "parameters": count_params(arm["family"], arm["preset"], overrides), "note": arm["note"]}
    out = {"arms": arms, "train": setup["train"], "notes": setup["notes"]}
    if setup["epochs"] is not None:
        out["epochs"] = setup["epochs"]
    if setup["test"] is not None:
        out["test"] = setup["test"]
    return json.dumps(out)


def _configs(experiment: LanguageModelling, scale: str) -> dict[str, Any]:
    s = experiment._setup(scale)
    blob = json.dumps({"arms": {k: {"family": a.family, "preset": a.preset, "overrides": a.overrides,
                                    "note": a.note} for k, a in s.arms.items()},
                       "train": s.train, "epochs": s.epochs, "test": s.test, "notes": s.notes})  # arms in order
    return json.loads(_configs_cached(blob))


class StepProgress(io.TextIOBase):
    """The trainer's console output, written to the run's log and read for progress: each line the trainer
    prints starts ``step N`` when it logs, so ``N / max_steps`` is how far the run is."""

    STEP = re.compile(r"^step\s+(\d+)\b")

    def __init__(self, log: io.TextIOBase, max_steps: int, progress: Progress):
        self.log, self.max_steps, self.progress = log, max(1, max_steps), progress
        self._line = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            match = self.STEP.match(line.strip())
            if match:
                self.progress(min(1.0, int(match.group(1)) / self.max_steps))
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def read_metrics(run_dir: Path) -> tuple[dict[str, float], dict[str, list[list[float]]]]:
    """The last validation and training loss, and the validation curves against tokens seen, from the run's
    ``metrics.jsonl`` and ``run_info.json`` (what the trainer logged, nothing recomputed)."""
    try:
        info = json.loads((run_dir / "run_info.json").read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DataError(f"{run_dir}: cannot read the run's metrics ({exc})") from None
    per_step = int(info["tokens_per_step"])
    val = [r for r in records if "val_bpb" in r]
    losses = [r for r in records if "loss" in r]
    if not val:
        raise DataError(f"{run_dir}: the run logged no validation; its eval_interval exceeds max_steps")
    last = val[-1]
    final = {"val_bpb": float(last["val_bpb"]), "val_loss": float(last["val_loss"])}
    if losses:
        final["train_loss"] = float(losses[-1]["loss"])
    curves = {"val_bpb": [[r["step"] * per_step, float(r["val_bpb"])] for r in val],
              "val_loss": [[r["step"] * per_step, float(r["val_loss"])] for r in val]}
    return final, curves


def epoch_steps(values: dict[str, Any], epochs: float) -> int:
    """Optimizer steps of ``epochs`` passes over the training split, read from the tokenized data (cached, so
    the trainer reuses it). One step reads ``tokens_per_step`` tokens (else a batch of full contexts)."""
    from ..data import prepare_data

    options = {k: values[k] for k in ("text_field", "hf_config", "hf_split", "max_docs", "val_fraction")
               if k in values}
    data = prepare_data(values["data"], values["tokenizer"], progress=False, **options)
    per_step = values.get("tokens_per_step") or values["batch_size"] * values["block_size"]
    return max(1, math.ceil(epochs * len(data.train) / per_step))


def held_out_metrics(run_dir: Path, test: dict[str, Any], device: str) -> dict[str, float]:
    """Loss, perplexity and bits per byte of the finished model on a whole held-out split (``test``: the data
    options of ``attnlab.evaluate``). ``evaluate`` scores a stream as its train and val parts; both together
    are every token of the split, so their summed NLL and bytes give the split's numbers."""
    from .. import evaluate

    parts = [evaluate(run_dir, split=part, full=True, device=device, **test) for part in ("train", "val")]
    tokens = sum(p["tokens"] for p in parts)
    nll = sum(p["loss"] * p["tokens"] for p in parts)
    n_bytes = sum(p["loss"] * p["tokens"] / (LN2 * p["bpb"]) for p in parts)
    return {"test_loss": nll / tokens, "test_ppl": math.exp(nll / tokens), "test_bpb": nll / (LN2 * n_bytes)}


def _tidy(run_dir: Path, *, keep_weights: bool) -> None:
    """Drop checkpoints (and, unless ``keep_weights``, the weights and tokenizer) of a finished run."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if keep_weights:
        return
    for path in run_dir.iterdir():
        if path.name in KEEP:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# ============================================================================================== lm-dat
DAT_SOURCE = ("DAT paper, language modelling: DAT reaches lower validation loss than a Transformer of about the "
              "same size (blog figure, Tiny Stories at 1.31e10 tokens: Transformer sa=8 1.7752, DAT sa=6/ra=2 "
              "1.7398, DAT sa=4/ra=4 1.7294)")


class LMDat(LanguageModelling):
    name = "lm-dat"
    description = ("Language modelling, GPT baseline vs Dual Attention Transformer at matched parameter counts "
                   "(half the heads relational, symbolic-attention symbols, RoPE in both, as the paper's LMs): "
                   "validation bits per byte against training tokens.")

    def setup(self, scale: str) -> Setup:
        if scale == "paper":
            return _dat_paper()
        base = dict(LAPTOP_TRAIN, max_steps=400) if scale == "laptop" else dict(SMOKE_TRAIN)
        preset = "tiny" if scale == "laptop" else "debug"
        dat = {"pos": "rope"}
        gpt = {"pos": "rope"}
        counted = {"vocab_size": BYTE_VOCAB, "block_size": base["block_size"]}
        target = count_params("dat", preset, {**dat, **counted})
        gpt["d_ff"] = matched_d_ff(target, "gpt", preset, {**gpt, **counted})
        arms = {
            "gpt": Arm("gpt", preset, gpt, "GPT baseline, RoPE, FFN widened to DAT's parameter count"),
            "dat": Arm("dat", preset, dat, "DAT, self-attention and relational heads half each, symbolic attention, "
                                            "RoPE"),
        }
        notes = {"matching": "GPT's d_ff is the width whose parameter count is closest to DAT's (the DAT paper's "
                             "Transformer and DAT differ by 2.4 % at 343M/353M)",
                 "budget": f"{base['max_steps']} steps × {base['batch_size']} × {base['block_size']} tokens"}
        return Setup(arms, base, notes=notes)

    def claims(self, scale: str, sizes: list[int] | None = None) -> list[Claim]:
        n = self.arm_parameters(scale)
        return [Claim(text=f"DAT ({n['dat']:,} parameters) reaches lower validation bits/byte than the GPT "
                           f"baseline ({n['gpt']:,})", better="dat", worse="gpt", metric="val_bpb",
                      higher_is_better=False, source=DAT_SOURCE)]


def _dat_paper() -> Setup:
    """The authors' FineWeb-Edu pretraining (``experiments/fineweb/pretrain.py`` defaults, the 343M DAT-LM)."""
    train = dict(data="hf:HuggingFaceFW/fineweb-edu", hf_config="sample-10BT", max_docs=10_000_000,
                 tokenizer="gpt2", block_size=1024, batch_size=32, tokens_per_step=524_288, max_steps=19_073,
                 lr=6e-4, min_lr=6e-5, warmup_steps=715, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
                 eval_interval=250, eval_tokens=655_360, dtype="bfloat16", checkpoint_interval=1000)
    gpt = dict(d_model=1024, n_layers=24, n_heads=16, bias=False, pos="rope", vocab_size=50304, block_size=1024)
    arms = {
        "gpt": Arm("gpt", "tiny", gpt, "the paper's Transformer: d_model 1024, 24 layers, 16 heads, RoPE, no "
                                       "biases (353.6 M; the paper: 353M)"),
        "dat": Arm("dat", "343m", {}, "the released DAT-LM 343M: sa 8, ra 8, 64 relations, GQA (4 key/value "
                                     "heads), symbolic attention over a frozen library, RoPE"),
    }
    notes = {"data": "FineWeb-Edu sample-10BT (about 9.7 M documents, 10 B GPT-2 tokens); validation is the "
                     "last 10 % of attnlab's token stream, not the authors' validation shard",
             "budget": "19,073 steps × 524,288 tokens = 10 B tokens, as the released DAT-LMs",
             "cost": "about 2·10^19 FLOPs of training per run: on the order of a day per run on one H100-class "
                     "GPU; on several GPUs run each arm with `attnlab train` under torchrun and the same options"}
    return Setup(arms, train, keep_weights=True, notes=notes)


# ============================================================================================== lm-leap
LEAP_SOURCE = ("leap-transformer README, Wikitext-2 test perplexity (T5 tokenizer, context 2048, 5.5M "
               "parameters): windowed LEAP 54.2, GPT-2 62.9, global LEAP 86.8")
LEAP_PUBLISHED = {"leap-windowed": 54.2, "gpt": 62.9, "leap-global": 86.8}


class LMLeap(LanguageModelling):
    name = "lm-leap"
    description = ("Language modelling, LEAP with windowed layers (windows 4·2^l, a global last layer) vs the GPT "
                   "baseline vs LEAP with every layer global, all of the same width, depth and heads with learned "
                   "positions (as leap-transformer's experiment): validation bits per byte against training tokens.")

    def setup(self, scale: str) -> Setup:
        if scale == "paper":
            return _leap_paper()
        base = dict(LAPTOP_TRAIN, max_steps=300) if scale == "laptop" else dict(SMOKE_TRAIN)
        preset = "tiny" if scale == "laptop" else "debug"
        same = {"dropout": 0.0}
        arms = {
            "leap-windowed": Arm("leap", preset, dict(same), "LEAP, windows 4·2^l per layer, the last layer global"),
            "gpt": Arm("gpt", preset, dict(same), "GPT baseline of the same dims"),
            "leap-global": Arm("leap", preset, {**same, "use_local_att": False}, "LEAP, every layer global"),
        }
        notes = {"matching": "the same d_model, layers, heads, FFN and learned positions in every arm, as in "
                             "leap-transformer's comparison (the counts differ by LEAP's extra projections)",
                 "dropout": "0 in every arm: a few hundred steps on 4.5 M training bytes do not overfit",
                 "budget": f"{base['max_steps']} steps × {base['batch_size']} × {base['block_size']} tokens"}
        return Setup(arms, base, notes=notes)

    def claims(self, scale: str, sizes: list[int] | None = None) -> list[Claim]:
        metric = "test_ppl" if scale == "paper" else "val_bpb"
        where = "test perplexity" if scale == "paper" else "validation bits/byte"
        return [
            Claim(text=f"windowed LEAP reaches lower {where} than the GPT baseline", better="leap-windowed",
                  worse="gpt", metric=metric, higher_is_better=False, source=LEAP_SOURCE),
            Claim(text=f"the GPT baseline reaches lower {where} than global LEAP", better="gpt",
                  worse="leap-global", metric=metric, higher_is_better=False, source=LEAP_SOURCE),
        ]

    def reference(self, arm: str, params: dict[str, Any], metric: str) -> float | None:
        """The README's Wikitext-2 test perplexities (only comparable at paper scale, whose metric it is)."""
        return LEAP_PUBLISHED.get(arm) if metric == "test_ppl" else None


def _leap_paper() -> Setup:
    """leap-transformer's Wikitext-2 experiment (``FastLM.ipynb`` and the README's training details)."""
    source = dict(data="hf:Salesforce/wikitext", hf_config="wikitext-2-v1", max_docs=100_000)
    train = dict(source, hf_split="train", tokenizer="google-t5/t5-small", block_size=2048, batch_size=2, lr=5e-4,
                 min_lr=0.0,
                 warmup_steps=0, weight_decay=0.01, beta1=0.9, beta2=0.999, grad_clip=1.0, eval_interval=500,
                 eval_tokens=None, dtype="bfloat16", checkpoint_interval=2000)
    same = dict(dropout=0.1, vocab_size=T5_VOCAB)
    dims = dict(same, d_model=128, n_layers=6, n_heads=4, block_size=2048)
    arms = {
        "leap-windowed": Arm("leap", "paper", dict(same), "leap:paper: windows 4, 8, 16, 32, 64, global"),
        "gpt": Arm("gpt", "tiny", dims, "GPT-2 of the same dims (learned positions, tied head)"),
        "leap-global": Arm("leap", "paper", {**same, "use_local_att": False}, "leap:paper, every layer global"),
    }
    notes = {"data": "Wikitext-2 (wikitext-2-v1) train split for training; validation is its last 10 % (attnlab's "
                     "split); the claims are judged on the whole test split",
             "budget": "25 epochs of the training tokens at 2 × 2048 tokens per step",
             "differences": "cosine decay to 0 instead of linear; the final model is scored, not the best-"
                            "validation one; bf16 autocast instead of fp16"}
    return Setup(arms, train, epochs=25, test=dict(source, hf_split="test"), keep_weights=True, notes=notes)


LM_DAT = LMDat()
LM_LEAP = LMLeap()
