"""The ``experiment`` subcommand, plugged into ``attnlab.cli`` by ``add_experiment_parser``/``cmd_experiment``."""

from __future__ import annotations

import argparse

from ..errors import ConfigError


def add_experiment_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "experiment", help="re-run a paper's experiment (several seeds, resumable): report, plots, verdicts")
    p.add_argument("name", nargs="?", help="the experiment; --list names them")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--scale", default="laptop",
                   help="laptop (about 10–20 min of a 2-core CPU), paper (the paper's configurations and budgets, "
                        "for GPUs), or an experiment's own (smoke: seconds, for tests)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per arm and grid point")
    p.add_argument("--sizes", type=int, nargs="+", metavar="N",
                   help="replace the grid of training-set sizes (training images; relational-games and vision-digits)")
    p.add_argument("--out-dir", metavar="DIR", help="output folder (default runs/experiments/NAME)")
    p.add_argument("--fresh", action="store_true",
                   help="delete the folder's earlier runs and start over (needed after a configuration change)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.json, report.md and the plots from the finished runs; train nothing")
    p.add_argument("--max-runs", type=int, metavar="N", help="train at most N runs now; the rest on a later call")
    p.add_argument("--device", default="auto", help="where to train: auto (a GPU when there is one), cpu, cuda, ...")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show the progress bar (each finished run is printed either way)")
    return p


def cmd_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from . import registry

    if args.list:
        console = Console()
        for name, description, available in registry.listing():
            console.print(f"{name:18s} {description}" + ("" if available else "  (not available)"), highlight=False,
                          soft_wrap=True)
        return 0
    if not args.name:
        raise ConfigError("name an experiment (attnlab experiment --list names them)")
    experiment = registry.get(args.name)
    experiment.device = args.device
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    from .runner import default_out_dir, run_experiment, summarise

    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(experiment.name)
    if args.report_only:
        report = summarise(experiment, out_dir)
        Console().print(f"report: {report}", highlight=False)
        return 0
    if args.max_runs is not None and args.max_runs < 0:
        raise ConfigError(f"--max-runs must be >= 0, got {args.max_runs}")
    run_experiment(experiment, scale=args.scale, seeds=args.seeds, sizes=args.sizes, out_dir=out_dir,
                   fresh=args.fresh, show_progress=args.progress, max_runs=args.max_runs)
    return 0
