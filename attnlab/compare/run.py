"""``attnlab compare``: train several models on identical data, tokenizer, token budget, seed and schedule.

Each model trains through ``attnlab.training.train`` in its own run directory under the report directory
(``runs/<label>/``), so every run is a normal, resumable attnlab run. With ``seeds: N`` every model trains N
times, with seeds ``seed``, ``seed + 1``, ...; the first seed's run keeps ``runs/<label>/`` and the others go to
``runs/<label>--seed-<S>/``, so a compare run with one seed is the first seed of one with more, and raising
``seeds`` later trains only the new runs. Re-running the same compare resumes unfinished runs and reuses
finished ones (a finished run's measurements are kept in its ``compare_outcome.json``, so it is not even
loaded again); the report is then rebuilt from the run directories.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..bench.env import environment
from ..bench.memory import peak_memory_bytes, state_tensors
from ..bench.runner import make_train_step, pick_device
from ..bench.specs import ModelSpec, parse_model_specs, safe_name
from ..errors import AttnlabError, ConfigError
from ..io import write_json
from ..options import Options
from ..training.checkpoint import latest_checkpoint
from ..training.config import TrainConfig

PER_MODEL_KEYS = ("model", "preset", "model_overrides", "out_dir", "resume")
OUTCOME_FILE = "compare_outcome.json"  # a finished run's measurements, so a rerun reuses them


@dataclass
class CompareConfig(Options):
    """The models and the one training setup they all share (``train``: any ``TrainConfig`` option)."""
    option_kind = "compare"

    name: str = "compare"
    models: list = field(default_factory=lambda: ["all"])
    preset: str = "tiny"
    train: dict[str, Any] = field(default_factory=dict)
    out_dir: str | None = None
    progress: bool = True
    description: str = ""
    seeds: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"compare: seeds must be an integer >= 1, got {self.seeds!r}")
        if not isinstance(self.train, dict):
            raise ConfigError("compare: 'train' must be a mapping of training options")
        per_model = sorted(set(self.train) & set(PER_MODEL_KEYS))
        if per_model:
            raise ConfigError(f"compare: {', '.join(per_model)} cannot be shared training options; "
                              "give models as family:preset[:key=value,...] or config files")
        self.train_config(ModelSpec("check", "gpt", "tiny"), Path("."))  # unknown/bad options fail now

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/compare-{self.name}")

    @property
    def seed_values(self) -> list[int]:
        """The seeds every model trains with: the shared ``seed`` (attnlab train's default when not given),
        then the next ``seeds - 1`` integers."""
        base = self.train.get("seed", _default_seed())
        return [int(base) + i for i in range(self.seeds)]

    def train_config(self, spec: ModelSpec, run_dir: Path, seed: int | None = None) -> TrainConfig:
        values = {"tensorboard": False, **self.train, "progress": self.progress, "model": spec.family,
                  "preset": spec.preset, "model_overrides": dict(spec.overrides), "out_dir": str(run_dir)}
        if seed is not None:
            values["seed"] = seed
        return TrainConfig.from_dict(values)


def _default_seed() -> int:
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "seed")


def model_run_dir(report_dir: Path, label: str, seed: int, first_seed: int) -> Path:
    """``runs/<label>/`` for the first seed (where a one-seed compare puts it), ``runs/<label>--seed-<S>/`` else."""
    name = safe_name(label)
    return report_dir / "runs" / (name if seed == first_seed else f"{name}--seed-{seed}")



@dataclass
class ModelOutcome:
    """What one model's run produced (metrics from its run directory), or why it has none."""

    label: str
    family: str
    preset: str
    seed: int | None = None
    run_dir: str | None = None
    error: str | None = None
    params: int | None = None
    steps: int | None = None
    tokens: int | None = None
    tokens_per_step: int | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    val_bpb: float | None = None
    best_val_bpb: float | None = None
    train_loss: float | None = None
    tokens_per_s: float | None = None
    train_minutes: float | None = None
    peak_mem_bytes: int | None = None
    sample: str = ""
    curve: dict[str, list] = field(default_factory=dict, repr=False)


@dataclass
class CompareResult:
    """Every run's outcome, in model order and, within a model, seed order (one per model with one seed)."""

    config: CompareConfig
    env: dict[str, Any]
    outcomes: list[ModelOutcome]
    report_dir: Path

    @property
    def seeds(self) -> list[int]:
        return self.config.seed_values

    def by_model(self) -> dict[str, list[ModelOutcome]]:
        """Each model's outcomes (one per seed), models in the order given."""
        groups: dict[str, list[ModelOutcome]] = {}
        for o in self.outcomes:
            groups.setdefault(o.label, []).append(o)
        return groups


def run_compare(cfg: CompareConfig, console: Console | None = None) -> CompareResult:
    """Train (or resume, or reuse) every model with every seed; the report is written by ``report.write_report``.

    Seeds go round by round (every model with the first seed, then every model with the second...), so an
    interrupted compare already holds complete rounds. A finished run is not trained or loaded again: its
    measurements come back from its ``compare_outcome.json`` and its curves from its metrics file.
    """
    console = console or Console(stderr=True)
    specs, skipped = parse_model_specs(cfg.models, cfg.preset)
    _check_trainable(specs)
    report_dir = cfg.run_dir
    _claim_report_dir(report_dir, cfg)
    seeds = cfg.seed_values
    results: dict[tuple[str, int], ModelOutcome] = {}
    peak_memory: dict[str, int | None] = {}
    total = len(specs) * len(seeds)
    for round_, seed in enumerate(seeds):
        for i, spec in enumerate(specs):
            run_dir = model_run_dir(report_dir, spec.label, seed, seeds[0])
            outcome = ModelOutcome(spec.label, spec.family, spec.preset, seed=seed, run_dir=str(run_dir))
            where = f"seed {seed}, " if len(seeds) > 1 else ""
            console.rule(f"[bold]{spec.label}[/] ({where}{round_ * len(specs) + i + 1}/{total})")
            try:
                tc = cfg.train_config(spec, run_dir, seed)
                if _reuse_finished(outcome, run_dir, tc):
                    console.print(f"{spec.label}: finished earlier, reusing {run_dir}")
                else:
                    # one peak-memory measurement per model (every seed builds the same model and batch)
                    _train_one(outcome, run_dir, tc, console, measure_memory=peak_memory.get(spec.label) is None,
                               sample=round_ == 0)
                    if outcome.peak_mem_bytes is None:
                        outcome.peak_mem_bytes = peak_memory.get(spec.label)
                    _save_outcome(outcome, run_dir)
                if peak_memory.get(spec.label) is None:
                    peak_memory[spec.label] = outcome.peak_mem_bytes
            except (AttnlabError, RuntimeError, ValueError) as exc:
                lines = str(exc).strip().splitlines()
                first = lines[0] if lines else ""
                outcome.error = first if isinstance(exc, AttnlabError) else f"{type(exc).__name__}: {first}"
                console.print(f"[red]{spec.label} failed: {outcome.error}[/]")
            results[spec.label, seed] = outcome
    outcomes = [ModelOutcome(s.spec.label, s.spec.family, s.spec.preset, error=s.skipped) for s in skipped]
    outcomes += [results[spec.label, seed] for spec in specs for seed in seeds]
    device = pick_device(cfg.train.get("device", "auto"))
    return CompareResult(cfg, environment(device), outcomes, report_dir)


def _train_one(outcome: ModelOutcome, run_dir: Path, tc: TrainConfig, console: Console, *, measure_memory: bool,
               sample: bool) -> None:
    """Train (or resume) one run, then read its metrics; peak memory and a sample only where they are shown."""
    from ..training import train

    tc.resume = latest_checkpoint(run_dir) is not None
    result = train(tc, console)
    _read_run(outcome, run_dir)
    outcome.train_minutes = result.elapsed_s / 60
    if measure_memory:
        outcome.peak_mem_bytes = train_step_peak_memory(run_dir, tc)
    if sample:
        outcome.sample = sample_text(run_dir, tc)


# What compare_outcome.json keeps: the measurements that cost a model load or a generation to redo.
SAVED_FIELDS = ("label", "seed", "steps", "train_minutes", "peak_mem_bytes", "sample")


def _save_outcome(outcome: ModelOutcome, run_dir: Path) -> None:
    write_json(run_dir / OUTCOME_FILE, {k: getattr(outcome, k) for k in SAVED_FIELDS})


def _reuse_finished(outcome: ModelOutcome, run_dir: Path, tc: TrainConfig) -> bool:
    """Fill ``outcome`` from a run that finished all ``tc.max_steps`` steps earlier; False when it has not (then
    it is trained or resumed). A missing or unreadable outcome file just means the run is looked at again."""
    try:
        saved = json.loads((run_dir / OUTCOME_FILE).read_text())
        finished = saved["steps"] >= tc.max_steps and saved["label"] == outcome.label and saved["seed"] == outcome.seed
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not finished or latest_checkpoint(run_dir) is None:
        return False
    _read_run(outcome, run_dir)
    if outcome.steps != saved["steps"]:
        return False
    outcome.train_minutes, outcome.peak_mem_bytes = saved.get("train_minutes"), saved.get("peak_mem_bytes")
    outcome.sample = saved.get("sample") or ""
    return True


def _check_trainable(specs: list[ModelSpec]) -> None:
    """Reference implementations and measurement options (seq_lens, parts...) belong to ``attnlab bench``."""
    for spec in specs:
        if spec.reference is not None:
            raise ConfigError(f"model {spec.label!r}: {spec.reference} is a reference implementation; "
                              "it runs in `attnlab bench` only")
        if spec.measure:
            raise ConfigError(f"model {spec.label!r}: {', '.join(spec.measure)} are `attnlab bench` options")


def _claim_report_dir(report_dir: Path, cfg: CompareConfig) -> None:
    """Refuse to mix runs trained under different settings in one report."""
    saved = report_dir / "compare_config.json"
    current = {"models": cfg.models, "preset": cfg.preset, "train": cfg.train}
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != json.loads(json.dumps(current)):
            raise ConfigError(f"{report_dir} holds a compare with other settings; pick another --out-dir")
    write_json(saved, current)


def _read_run(outcome: ModelOutcome, run_dir: Path) -> None:
    """Final metrics and curves from the run's metrics.jsonl and run_info.json."""
    info = json.loads((run_dir / "run_info.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_recs = [r for r in records if "loss" in r]
    val_recs = [r for r in records if "val_loss" in r]
    per_step = info["tokens_per_step"]
    outcome.params, outcome.tokens_per_step = info["parameters"], per_step
    outcome.steps = max((r["step"] for r in records), default=0)
    outcome.tokens = outcome.steps * per_step
    if train_recs:
        outcome.train_loss = train_recs[-1]["loss"]
        later = train_recs[1:] or train_recs  # the first window includes start-up
        outcome.tokens_per_s = statistics.median(r["tok_per_s"] for r in later)
    if val_recs:
        last = val_recs[-1]
        outcome.val_loss, outcome.val_ppl, outcome.val_bpb = last["val_loss"], last["val_ppl"], last["val_bpb"]
        outcome.best_val_bpb = min(r["val_bpb"] for r in val_recs)
    outcome.curve = {
        "train_tokens": [r["step"] * per_step for r in train_recs], "train_loss": [r["loss"] for r in train_recs],
        "val_tokens": [r["step"] * per_step for r in val_recs], "val_loss": [r["val_loss"] for r in val_recs],
        "val_bpb": [r["val_bpb"] for r in val_recs],
    }


def train_step_peak_memory(run_dir: Path, tc: TrainConfig) -> int | None:
    """Peak memory of one training micro-step at the run's batch and block size, measured as bench does."""
    from .. import load

    device = pick_device(tc.device)
    model = load(run_dir, device=str(device))
    block = tc.block_size or model.config.block_size
    x = torch.randint(0, model.config.vocab_size, (tc.batch_size, block), device=device)
    step, optimizer = make_train_step(model, x, x, tc.dtype, device)
    peak = peak_memory_bytes(step, device, [*state_tensors(model, optimizer), x])
    del model, optimizer
    return peak


@torch.no_grad()
def sample_text(run_dir: Path, tc: TrainConfig) -> str:
    """``sample_tokens`` sampled from ``sample_prompt`` with the run's seed (top-k 50, temperature 0.8)."""
    from .. import load, load_tokenizer

    if tc.sample_tokens <= 0:
        return ""
    device = pick_device(tc.device)
    model, tok = load(run_dir, device=str(device)), load_tokenizer(run_dir)
    ids = tok(tc.sample_prompt, return_tensors="pt").input_ids
    if ids.numel() == 0:
        ids = torch.tensor([[tok.eos_token_id or 0]])
    n_new = min(tc.sample_tokens, model.config.block_size - ids.shape[1])
    if n_new <= 0:
        return ""
    torch.manual_seed(tc.seed)
    out = model.generate(ids.to(device), max_new_tokens=n_new, do_sample=True, top_k=50, temperature=0.8,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return tc.sample_prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
