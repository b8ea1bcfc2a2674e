"""The ``attnlab bench`` loop: for each model and length, time a training step, a prefill and decoding.

Each measurement becomes one flat row (see ``ROW_FIELDS`` in ``report``); a measurement that fails (out of
memory, a length the model cannot take) becomes a row with ``status`` "error: ..." and the run goes on; one
a model cannot do at all (a reference implementation without a cache) a row with its "n/a: ..." status.
What is measured for a model is its ``Plan``: the run's options, replaced by the model entry's own.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import AttnlabError, ConfigError
from ..evaluation import autocast_context
from ..models.checkpointing import enable_activation_checkpointing
from ..models.hf_compat import output_cache
from ..options import Options
from .env import environment
from .flops import count_flops, default_gemm_size, measure_peak_flops
from .memory import cache_tensors, peak_memory_bytes, state_tensors, tensor_bytes
from .references import REFERENCES
from .specs import (MATCH_MODES, MEASURE_OPTIONS, PARTS, ModelSpec, Resolved, build_model, check_measure_options,
                    parse_model_specs, resolve)
from .targets import RowRef, Target, check_target_labels, evaluate_targets, parse_targets
from .timing import Timing, time_fn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class BenchConfig(Options):
    """Everything a bench run depends on; a suite file holds the same keys."""
    option_kind = "bench"

    name: str = "bench"
    models: list[str] = field(default_factory=lambda: ["all"])
    preset: str = "tiny"
    match: str = "dims"
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    vocab_size: int = 256
    dropout: float | None = 0.0  # measure the architecture, not the regulariser; None keeps the presets'
    batch_size: int = 4
    seq_lens: list[int] = field(default_factory=lambda: [128, 256, 512])
    contexts: list[int] = field(default_factory=lambda: [128, 512])
    decode_tokens: int = 8
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    no_cache: bool = True
    train_with_cache: bool = False
    activation_checkpointing: str = "none"  # none, full or selective: blocks recomputed in training steps
    dtype: str = "float32"
    device: str = "auto"
    threads: int | None = None
    warmup: int = 1
    repeats: int = 5
    gemm_size: int | None = None
    seed: int = 0
    plots: bool = True
    progress: bool = True
    out_dir: str | None = None
    description: str = ""
    targets: list[dict[str, Any]] = field(default_factory=list)
    paired_rounds: int = 3  # alternating re-timings of the two rows of each paired target

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.match not in MATCH_MODES:
            raise ConfigError(f"match must be one of {MATCH_MODES}, got {self.match!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        check_measure_options(self.measure_options())
        for name in ("vocab_size", "decode_tokens", "repeats"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")
        if not isinstance(self.paired_rounds, int) or self.paired_rounds < 0:
            raise ConfigError(f"paired_rounds must be an integer >= 0, got {self.paired_rounds!r}")
        for name in ("d_model", "n_layers", "n_heads", "threads", "gemm_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        parse_targets(self.targets)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/bench-{self.name}")

    def measure_options(self) -> dict[str, Any]:
        """The run's values of the options a model entry may replace for itself."""
        return {name: getattr(self, name) for name in MEASURE_OPTIONS}

    def plan(self, spec: ModelSpec) -> Plan:
        """What is measured for ``spec``: these options, replaced by the ones its entry sets for itself."""
        return Plan(**{**self.measure_options(), **spec.measure}, decode_tokens=self.decode_tokens)


@dataclass(frozen=True)
class Plan:
    """One model's measurements: which parts, at which lengths and batch, and how a training step runs.

    ``train_with_cache`` passes the model's cache (e.g. a Transformer-XL memory) from one training step to
    the next, as the trainer's segment streaming does, so steps attend to the previous segment's memory.
    ``activation_checkpointing`` (none, full, selective) recomputes blocks in the training step's backward.
    """

    seq_lens: list[int]
    contexts: list[int]
    parts: list[str]
    batch_size: int
    no_cache: bool
    train_with_cache: bool
    activation_checkpointing: str
    decode_tokens: int

    def jobs(self) -> list[tuple[str, int]]:
        """(row kind, length) of every row, in the order they are measured."""
        jobs = []
        if "train" in self.parts:
            jobs += [("train", t) for t in self.seq_lens]
        if "prefill" in self.parts:
            jobs += [("prefill", t) for t in self.seq_lens]
        if "decode" in self.parts:
            jobs += [("decode_cache", c) for c in self.contexts]
            if self.no_cache:
                jobs += [("decode_nocache", c) for c in self.contexts]
        return jobs

    @property
    def block_size(self) -> int:
        """Long enough for every length this model runs (learned positions cannot extrapolate)."""
        lengths = list(self.seq_lens) if {"train", "prefill"} & set(self.parts) else []
        if "decode" in self.parts:
            lengths += [max(self.contexts) + self.decode_tokens]
        return max(lengths)



@dataclass
class BenchResult:
    config: BenchConfig
    env: dict[str, Any]
    peak_flops: dict[str, dict[str, float | int]]
    rows: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    targets: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "env": self.env, "peak_flops": self.peak_flops,
                "results": self.rows, "skipped": self.skipped, "targets": self.targets}


def pick_device(name: str) -> torch.device:
    from ..training.distributed import DistInfo, pick_device as pick

    return pick(name, DistInfo())


@contextlib.contextmanager
def pinned_threads(threads: int | None):
    """Pin intra-op CPU threads for the run (so results say how many were used), then restore them."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def resolve_models(cfg: BenchConfig) -> tuple[list[Resolved], list[Target]]:
    """Every model of ``cfg`` with its config (or why it is skipped), and the targets, checked before any run.

    Each model's block size is long enough for its own lengths (its ``Plan``).
    """
    specs, skipped = parse_model_specs(cfg.models, cfg.preset)
    targets = parse_targets(cfg.targets)
    check_target_labels(targets, [r.spec.label for r in skipped] + [s.label for s in specs])
    dims = {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads}
    fixed = {"vocab_size": cfg.vocab_size}
    if cfg.dropout is not None:
        fixed["dropout"] = cfg.dropout
    resolved = skipped + resolve(specs, cfg.match, dims=dims,
                                 fixed=lambda spec: {**fixed, "block_size": cfg.plan(spec).block_size})
    for item in resolved:
        if item.config is not None and cfg.plan(item.spec).train_with_cache:
            check_train_with_cache(item)
    return resolved, targets


def run_bench(cfg: BenchConfig, console: Console | None = None) -> BenchResult:
    """Run every measurement of ``cfg``; nothing is written (see ``report.write_bench``)."""
    console = console or Console(stderr=True)
    resolved, targets = resolve_models(cfg)
    device = pick_device(cfg.device)
    with pinned_threads(cfg.threads):
        env = environment(device)
        rows: list[dict[str, Any]] = []
        with _progress(cfg, console) as bar:
            task = bar.add_task("peak GEMM", total=_n_steps(cfg, resolved) + 2, what="")
            peak = {}
            for dtype in DTYPES:
                bar.update(task, what=f"peak GEMM {dtype}")
                peak[dtype] = measure_peak_flops(device, DTYPES[dtype], cfg.gemm_size or default_gemm_size(device))
                bar.advance(task)
            for item in resolved:
                if item.config is None:
                    continue
                try:
                    bench = ModelBench(item, cfg, device, peak[cfg.dtype]["flops_per_s"])
                except (AttnlabError, RuntimeError, ValueError) as exc:  # e.g. out of memory building it
                    item.skipped = _first_line(exc)
                    bar.advance(task, len(cfg.plan(item.spec).jobs()))  # its rows will not come
                    continue
                for row in bench.run(lambda what: bar.update(task, what=what), lambda: bar.advance(task)):
                    rows.append({**row, **env})
                    if cfg.progress and not console.is_terminal:  # no live bar in a log: one line per result
                        console.print(_log_line(row), highlight=False)
                del bench
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            paired = measure_paired(cfg, resolved, targets, rows, device, peak[cfg.dtype]["flops_per_s"], bar, task)
    skipped_rows = [{"model": r.spec.label, "reason": r.skipped} for r in resolved if r.skipped]
    return BenchResult(cfg, env, peak, rows, skipped_rows, evaluate_targets(targets, rows, paired))


def measure_paired(
    cfg: BenchConfig, resolved: list[Resolved], targets: list[Target], rows: list[dict[str, Any]],
    device: torch.device, peak_flops_per_s: float, bar: Progress, task,
) -> dict[RowRef, dict[str, Any]]:
    """Time the two rows of every paired target again, alternating A, B, A, B, ... for ``paired_rounds``.

    On a shared machine the speed drifts over seconds to minutes; rows measured minutes apart can differ by
    more than a 10 % target even for the same computation. Alternating puts both under the same conditions.
    Each round is a full timing (warm-up + repeats) of each row; the result per row is the median of its
    rounds' medians. Rows that failed in the main run are left out (their target stays "not measured").
    """
    ok = {(r["model"], r["kind"], r["seq_len"]) for r in rows if r["status"] == "ok"}
    refs = list(dict.fromkeys(ref for t in targets if t.paired for ref in (t.value, t.over)
                              if (ref.label, ref.kind, ref.seq_len) in ok))
    if not refs or cfg.paired_rounds < 1:
        return {}
    items = {r.spec.label: r for r in resolved if r.config is not None}
    benches = {label: ModelBench(items[label], cfg, device, peak_flops_per_s) for label in {r.label for r in refs}}
    medians: dict[RowRef, list[float]] = {ref: [] for ref in refs}
    bar.update(task, total=bar.tasks[0].total + cfg.paired_rounds * len(refs))
    for round_ in range(cfg.paired_rounds):
        for ref in refs:
            bar.update(task, what=f"paired {round_ + 1}/{cfg.paired_rounds}: {ref}")
            medians[ref].append(benches[ref.label].measure(ref.kind, ref.seq_len, timing_only=True)["time_median_s"])
            bar.advance(task)
    return {ref: {"model": ref.label, "kind": ref.kind, "seq_len": ref.seq_len, "status": "ok",
                  "time_median_s": statistics.median(times), "rounds": times} for ref, times in medians.items()}


def check_train_with_cache(item: Resolved) -> None:
    """As the trainer's segment streaming: only a bounded memory with relative positions can be carried."""
    config = item.config
    if not config.carries_memory:
        raise ConfigError(f"model {item.spec.label!r}: train_with_cache needs a model with XL memory (mem_len > 0)")
    if config.pos == "learned":
        raise ConfigError(f"model {item.spec.label!r}: train_with_cache needs relative positions (pos='rope'); "
                          "learned ones cannot go past block_size")


def _n_steps(cfg: BenchConfig, resolved: list[Resolved]) -> int:
    """Progress-bar steps: one per row of every model that will run."""
    return sum(len(cfg.plan(r.spec).jobs()) for r in resolved if r.config is not None)


def _progress(cfg: BenchConfig, console: Console):
    return Progress(TextColumn("[bold blue]bench"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[what]}"),
                    TimeElapsedColumn(), console=console, disable=not cfg.progress)


def make_train_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str, device: torch.device, cache: Any = None
) -> tuple[Callable[..., None], torch.optim.Optimizer]:
    """A closure doing forward + backward + AdamW step + zero_grad, already run once.

    The first call creates the optimizer state (and fills ``cache``, a memory carried from step to step when
    given), so what is measured afterwards is the steady state.
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    memory = {"use_cache": False} if cache is None else {"cache": cache, "use_cache": True}

    def step(_=None) -> None:
        with autocast_context(device, dtype):
            loss = model(input_ids=x, shift_labels=y, **memory).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    return step, optimizer


class ModelBench:
    """All measurements of one model; rows share its identity (label, family, sizes, parameters)."""

    def __init__(self, item: Resolved, cfg: BenchConfig, device: torch.device, peak_flops_per_s: float):
        self.cfg, self.device, self.peak = cfg, device, peak_flops_per_s
        self.plan = cfg.plan(item.spec)
        torch.manual_seed(cfg.seed)
        config = item.config
        self.model = build_model(item.spec, config).to(device)
        self.unsupported: dict[str, str] = dict(getattr(self.model, "unsupported", {}))
        self.checkpoint_blocks(self.plan.activation_checkpointing)
        reference = REFERENCES.get(item.spec.reference) if item.spec.reference else None
        self.identity = {
            "model": item.spec.label, "family": item.spec.family, "preset": item.spec.preset, "match": cfg.match,
            "implementation": f"{reference.name} {reference.version()}" if reference else "attnlab",
            "params": item.params, "d_model": config.d_model, "n_layers": config.n_layers,
            "n_heads": config.n_heads, "dtype": cfg.dtype, "batch_size": self.plan.batch_size,
            "activation_checkpointing": self.plan.activation_checkpointing,
        }
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def checkpoint_blocks(self, mode: str) -> None:
        """Activation checkpointing for the training rows; a model without it gets "n/a" training rows."""
        if mode == "none":
            return
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            self.unsupported["train"] = f"n/a: no activation checkpointing in {type(self.model).__name__}"
            return
        enable_activation_checkpointing(self.model, mode)

    def tokens(self, length: int) -> torch.Tensor:
        shape = (self.plan.batch_size, length)
        return torch.randint(0, self.model.config.vocab_size, shape, generator=self.generator).to(self.device)

    def autocast(self):
        return autocast_context(self.device, self.cfg.dtype)

    def measure(self, kind: str, length: int, timing_only: bool = False) -> dict[str, Any]:
        """One measurement of this model; ``timing_only`` skips the FLOP count and the memory profile."""
        measure = {"train": self.train_step, "prefill": self.prefill, "decode_cache": self.decode_cached,
                   "decode_nocache": self.decode_uncached}
        return measure[kind](length, timing_only)

    def run(self, describe: Callable[[str], None], advance: Callable[[], None]):
        label = self.identity["model"]
        for kind, length in self.plan.jobs():
            describe(f"{label} {kind} {length}")
            base = {**self.identity, "kind": kind, "seq_len": length}
            if kind in self.unsupported:
                yield {**base, "status": self.unsupported[kind]}
                advance()
                continue
            try:
                yield {**base, **self.measure(kind, length), "status": "ok"}
            except (RuntimeError, ValueError, torch.OutOfMemoryError) as exc:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                yield {**base, "status": f"error: {_first_line(exc)}"}
            advance()

    def _row(self, timing: Timing, tokens: int, flops: int | None, peak_mem: int | None,
             cache_bytes: int | None = None) -> dict[str, Any]:
        achieved = flops / timing.median if flops else None
        return {**timing.to_dict(), "tokens_per_s": tokens / timing.median, "flops": flops,
                "achieved_flops_per_s": achieved, "mfu": achieved / self.peak if achieved else None,
                "peak_mem_bytes": peak_mem, "cache_bytes": cache_bytes}

    # ------------------------------------------------------------------------------ measurements
    def train_step(self, length: int, timing_only: bool = False) -> dict[str, Any]:
        """Forward + backward + AdamW step on (batch, length) tokens; tokens/s counts every input token.

        With ``train_with_cache`` the model's cache is carried from step to step (already full when timed).
        """
        x, y = self.tokens(length), self.tokens(length)
        cache = self.model.make_cache() if self.plan.train_with_cache else None
        step, optimizer = make_train_step(self.model, x, y, self.cfg.dtype, self.device, cache)
        flops = peak_mem = None
        if not timing_only:
            flops = count_flops(step)
            resident = [*state_tensors(self.model, optimizer), x, y, *cache_tensors(cache)]
            peak_mem = peak_memory_bytes(step, self.device, resident)
        timing = time_fn(step, device=self.device, warmup=self.cfg.warmup, repeats=self.cfg.repeats)
        return self._row(timing, x.numel(), flops, peak_mem)

    @torch.no_grad()
    def prefill(self, length: int, timing_only: bool = False) -> dict[str, Any]:
        """One forward pass that fills the cache, keeping only the last position's logits (as generate does)."""
        model = self.model.eval()
        x = self.tokens(length)

        def run(_=None) -> None:
            with self.autocast():
                model(input_ids=x, use_cache=True, logits_to_keep=1)

        flops = None if timing_only else count_flops(run)
        peak_mem = None if timing_only else peak_memory_bytes(run, self.device, [*state_tensors(model), x])
        timing = time_fn(run, device=self.device, warmup=self.cfg.warmup, repeats=self.cfg.repeats)
        return self._row(timing, x.numel(), flops, peak_mem)

    @torch.no_grad()
    def decode_cached(self, context: int, timing_only: bool = False) -> dict[str, Any]:
        """Per-token latency of greedy decoding with the model's cache after ``context`` tokens of prompt,
        and the bytes the cache holds after the last decoded token (a KV cache grows, a memory does not)."""
        model, n = self.model.eval(), self.cfg.decode_tokens
        x = self.tokens(context)

        def setup() -> list:
            with self.autocast():
                out = model(input_ids=x, use_cache=True, logits_to_keep=1)
            return [output_cache(out), out.logits[:, -1:].argmax(-1)]

        def one_token(state: list) -> None:
            with self.autocast():
                out = model(input_ids=state[1], cache=state[0], use_cache=True)
            state[1] = out.logits[:, -1:].argmax(-1)

        def decode(state: list) -> None:
            for _ in range(n):
                one_token(state)

        state = setup()
        flops = None if timing_only else count_flops(lambda: one_token(state))
        for _ in range(n - 1):  # the cache as it is after the context and n tokens (block_size allows no more)
            one_token(state)
        cache_bytes = tensor_bytes(cache_tensors(state[0]))
        timing = time_fn(decode, setup=setup, device=self.device, warmup=self.cfg.warmup, repeats=self.cfg.repeats)
        return self._row(timing.scaled(1 / n), self.plan.batch_size, flops, None, cache_bytes)

    @torch.no_grad()
    def decode_uncached(self, context: int, timing_only: bool = False) -> dict[str, Any]:
        """Per-token latency without a cache: every new token recomputes the whole ``context``."""
        model = self.model.eval()
        x = self.tokens(context)

        def run(_=None) -> None:
            with self.autocast():
                model(input_ids=x, use_cache=False, logits_to_keep=1)

        flops = None if timing_only else count_flops(run)
        timing = time_fn(run, device=self.device, warmup=self.cfg.warmup, repeats=self.cfg.repeats)
        return self._row(timing, self.plan.batch_size, flops, None)


def _log_line(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['model']} {row['kind']} {row['seq_len']}: {row['status']}"
    return (f"{row['model']} {row['kind']} {row['seq_len']}: {1e3 * row['time_median_s']:.2f} ms, "
            f"{row['tokens_per_s']:,.0f} tok/s")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
