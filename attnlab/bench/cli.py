"""The ``bench`` subcommand, plugged into ``attnlab.cli`` by ``add_bench_parser``/``cmd_bench``.

Flags default to "not given" so that a ``--suite`` file supplies the values and explicit flags override it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError

S = argparse.SUPPRESS
def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="speed, memory and MFU of models vs sequence length (tables, plots)")
    p.add_argument("--suite", help="a suite in benchmarks/suites (e.g. cpu-small, gpu-full) or a .yaml path")
    p.add_argument("--models", nargs="+", default=S, metavar="M",
                   help="family[:preset[:key=value,...]], a config file, or 'all' (default)")
    p.add_argument("--preset", default=S, help="preset for 'all' and bare family names (default tiny)")
    p.add_argument("--match", choices=["dims", "params", "none"], default=S,
                   help="same d_model/n_layers/n_heads (dims, default), same parameter count (params), presets as is")
    for name in ("d_model", "n_layers", "n_heads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=S, help="matched size (default: first model's)")
    p.add_argument("--vocab-size", type=int, default=S, help="vocabulary of the random tokens (default 256)")
    p.add_argument("--dropout", type=float, default=S, help="every model's dropout (default 0.0)")
    p.add_argument("--batch-size", type=int, default=S, help="sequences per call (default 4)")
    p.add_argument("--seq-lens", nargs="+", type=int, default=S, metavar="T", help="train/prefill lengths")
    p.add_argument("--contexts", nargs="+", type=int, default=S, metavar="C", help="decode context lengths")
    p.add_argument("--decode-tokens", type=int, default=S, help="tokens decoded per timed repetition")
    p.add_argument("--parts", nargs="+", choices=["train", "prefill", "decode"], default=S, help="what to measure")
    p.add_argument("--recompute", dest="no_cache", action=argparse.BooleanOptionalAction, default=S,
                   help="also time decoding without a cache (recompute the context per token; default on)")
    p.add_argument("--activation-checkpointing", nargs="?", const="full", choices=["none", "full", "selective"],
                   default=S, metavar="MODE", help="recompute blocks in the training step's backward: full (the "
                   "flag alone: every block), selective (every other block) or none (default)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=S, help="float32 or bf16 autocast")
    p.add_argument("--device", default=S, help="auto, cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=S, help="CPU threads to pin (default: torch's)")
    p.add_argument("--warmup", type=int, default=S, help="untimed calls before timing (default 1)")
    p.add_argument("--repeats", type=int, default=S, help="timed repetitions (default 5)")
    p.add_argument("--paired-rounds", type=int, default=S,
                   help="alternating re-timings of the two rows of each paired target (default 3; 0: off)")
    p.add_argument("--gemm-size", type=int, default=S, help="matrix size of the peak-FLOP/s GEMM")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--out-dir", default=S, help="where results and plots go (default runs/bench-NAME)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=S, help="write PNG plots")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=S, help="progress bar")
    p.add_argument("--no-targets", dest="targets", action="store_const", const=[], default=S,
                   help="ignore the suite's targets (e.g. when --models replaces the models they name)")
    return p


def given_options(args: argparse.Namespace, skip: tuple[str, ...]) -> dict[str, Any]:
    """The flags given on the command line (the others are suppressed), but ``skip`` and ``train*``."""
    return {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("train")}


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .report import print_table, write_bench
    from .runner import BenchConfig, run_bench
    from .suites import load_suite

    values = load_suite(args.suite, "bench") if args.suite else {}
    values.update(given_options(args, ("command", "suite")))
    cfg = BenchConfig.from_dict(values)
    result = run_bench(cfg, Console(stderr=True))
    if not result.rows:
        reasons = "; ".join(f"{s['model']}: {s['reason']}" for s in result.skipped) or "no models"
        raise ConfigError(f"nothing to benchmark ({reasons})")
    out = Console() if sys.stdout.isatty() else Console(width=160)  # a pipe or file gets the full table
    print_table(result, out)
    paths = write_bench(result, cfg.run_dir, cfg.plots)
    out.print(f"wrote {paths['json']}, {paths['csv']}, {paths['markdown']}"
              + (f" and {len(paths['plots'])} plots ({', '.join(p.name for p in paths['plots'])})" if paths["plots"] else ""))
    return 0
