"""The ``compare`` subcommand, plugged into ``attnlab.cli`` by ``add_compare_parser``/``cmd_compare``.

Flags default to "not given" so that a ``--suite`` file supplies the values and explicit flags override it.
"""

from __future__ import annotations

import argparse

from ..bench.cli import S, given_options
from ..errors import ConfigError

# The shared training options compare exposes as flags; help texts and types come from `attnlab train`'s.
TRAIN_FLAGS = (
    "data", "tokenizer", "vocab_size", "max_steps", "batch_size", "block_size", "tokens_per_step", "lr", "min_lr",
    "warmup_steps", "eval_interval", "eval_tokens", "seed", "dtype", "device", "sample_prompt", "sample_tokens",
)


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="train several models on identical data and budget; one report")
    p.add_argument("--suite", help="a compare suite in benchmarks/suites (e.g. compare-shakespeare) or a .yaml path")
    p.add_argument("--models", nargs="+", default=S, metavar="M",
                   help="family[:preset[:key=value,...]], a YAML/JSON config file, or 'all'")
    p.add_argument("--preset", default=S, help="preset for 'all' and bare family names (default tiny)")
    p.add_argument("--name", default=S, help="report title (default: the suite's name)")
    p.add_argument("--out-dir", default=S, help="report directory (default runs/compare-NAME)")
    p.add_argument("--seeds", type=int, default=S, metavar="N",
                   help="train every model N times, with seeds SEED, SEED+1, ...; the report gives the mean ± 95 %% "
                        "interval over seeds (default 1)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=S)
    from ..cli import train_option_help, train_option_type

    for name in TRAIN_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=f"train.{name}", type=train_option_type(name), default=S,
                       help=train_option_help(name), metavar=name.upper())
    p.add_argument("--train", dest="train_set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other shared training option (see attnlab train --help), repeatable")
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..bench.suites import load_suite
    from ..cli import _parse_overrides
    from .report import write_report
    from .run import CompareConfig, run_compare

    values = load_suite(args.suite, "compare") if args.suite else {}
    values.update(given_options(args, ("command", "suite", "train_set")))
    train = dict(values.get("train") or {})
    train.update({k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("train.")})
    train.update(_parse_overrides(args.train_set))
    values["train"] = train
    cfg = CompareConfig.from_dict(values)
    result = run_compare(cfg, Console(stderr=True))
    paths = write_report(result)
    if not any(o.error is None for o in result.outcomes):
        raise ConfigError("no model trained: " + "; ".join(f"{o.label}: {o.error}" for o in result.outcomes))
    Console().print(f"report: {paths['markdown']} ({', '.join(p.name for k, p in paths.items() if k != 'markdown')})")
    return 0
