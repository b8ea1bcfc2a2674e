"""The ``attnlab`` command line: train, eval, generate, info, convert, models (bench, compare and viz plug in).

Every training option is a field of ``TrainConfig`` that carries its own help; the ``train`` flags and their
``--help`` are generated from those fields, so the CLI, config files, the Python API and docs/cli.md can never
disagree. User mistakes end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import AttnlabError, ConfigError, DataError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _train_field(name: str) -> dataclasses.Field:
    from .training.config import TrainConfig

    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


def train_option_type(name: str) -> type:
    """The Python type of a ``TrainConfig`` field (``int | None`` → int), for its command-line flag."""
    kind = str(_train_field(name).type)
    return bool if kind == "bool" else int if kind.startswith("int") else float if kind.startswith("float") else str


def train_option_help(name: str) -> str:
    """A ``TrainConfig`` field's help as argparse prints it: the Markdown backticks dropped, ``%`` escaped."""
    return _argparse_text(_train_field(name).metadata["help"])


def _argparse_text(text: str) -> str:
    return text.replace("`", "").replace("%", "%%")


def _flag_help(f: dataclasses.Field) -> str:
    """The field's help with its default, as ``attnlab train --help`` shows it."""
    from .options import shown_default

    shown = shown_default(f)
    suffix = "" if shown == "–" else f" (default: {_argparse_text(shown)})"
    return train_option_help(f.name) + suffix


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field, in argument groups named by the fields' ``group``."""
    from .training.config import TrainConfig

    parser.add_argument("--config", metavar="FILE",
                        help="YAML or JSON file of training options (the field names, with underscores); flags "
                             "given on the command line win")
    sections: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        group = f.metadata["group"]
        if group not in sections:
            sections[group] = parser.add_argument_group(group)
        _add_train_flag(sections[group], f)


def _add_train_flag(parser: Any, f: dataclasses.Field) -> None:
    metavar, help_text = f.metadata.get("metavar"), _flag_help(f)
    if f.name == "model_overrides":  # --set KEY=VALUE, repeatable; merged into the config file's mapping
        parser.add_argument(_flag(f), action="append", default=[], metavar=metavar, help=help_text)
    elif train_option_type(f.name) is bool:
        parser.add_argument(_flag(f), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=help_text)
    else:
        parser.add_argument(_flag(f), type=train_option_type(f.name), default=argparse.SUPPRESS, metavar=metavar,
                            help=help_text)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _no_default(value: Any) -> bool:
    return value is None or value is False or value == [] or value == argparse.SUPPRESS


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends with the flag's default, where it has a meaningful one (not None, off or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        from .options import format_default

        text = _argparse_text(action.help or "")
        if action.option_strings and not _no_default(action.default):
            text += f" (default: {_argparse_text(format_default(action.default))})"
        return text


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnlab", description="Train, compare and inspect alternative-attention LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (resumable; torchrun for several processes)")
    _add_train_flags(p)

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a saved run on a dataset",
                       formatter_class=_DefaultsFormatter)
    p.add_argument("run", help="run directory or HF model directory")
    p.add_argument("--data", default="shakespeare", metavar="SOURCE", help="dataset, as for `attnlab train --data`")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="field holding the text in JSONL/JSON/parquet/HF records")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="`val` (the held-out tail of the token stream) or `train`")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="fraction held out for validation; the run's own gives its validation split")
    p.add_argument("--block-size", type=int, metavar="N", help="context length in tokens (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="sequences per batch")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="evaluate at most this many tokens (default: the whole split)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="`float32`, or `bfloat16` autocast")
    p.add_argument("--memory", action="store_true",
                   help="XL-memory models: read the split as streams of consecutive segments, carrying memory")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("generate", help="stream text from a saved run", formatter_class=_DefaultsFormatter)
    p.add_argument("run", help="run directory or HF model directory")
    p.add_argument("--prompt", default="\n", metavar="TEXT", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="sampling temperature, > 0")
    p.add_argument("--top-k", type=int, default=50, metavar="K", help="sample among the K likeliest tokens; 0: all")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: the likeliest tokens whose probabilities add up to P")
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the sampling")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")

    p = sub.add_parser("info", help="parameter counts and config of a run, or of a family preset",
                       formatter_class=_DefaultsFormatter)
    p.add_argument("run", nargs="?", help="run directory (or omit and give --model/--preset)")
    p.add_argument("--model", default="gpt", metavar="FAMILY", help="model family; `attnlab models` lists them")
    p.add_argument("--preset", default="tiny", metavar="NAME", help="named size of the family")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, repeatable")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("convert", help="convert another implementation's checkpoint into an attnlab model")
    p.add_argument("kind", choices=["dat-checkpoint"], help="dat-checkpoint: the dual-attention package's .pt")
    p.add_argument("source", help="checkpoint file")
    p.add_argument("out", help="output model directory")

    p = sub.add_parser("models", help="list model families and their presets", formatter_class=_DefaultsFormatter)
    p.add_argument("--options", metavar="FAMILY",
                   help="list the family's model config options (`--set KEY=VALUE`), with defaults and help")

    from .bench.cli import add_bench_parser
    from .compare.cli import add_compare_parser
    from .viz.cli import add_viz_parser

    add_bench_parser(sub)
    add_compare_parser(sub)
    add_viz_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from .cpu_memory import keep_freed_memory

    keep_freed_memory()  # CPU steps reuse freed memory instead of page-faulting it in again

    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with streamed text
    from .bench.cli import cmd_bench
    from .compare.cli import cmd_compare
    from .viz.cli import cmd_viz

    commands = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "info": cmd_info,
                "convert": cmd_convert, "models": cmd_models, "bench": cmd_bench, "compare": cmd_compare,
                "viz": cmd_viz}
    try:
        return commands[args.command](args)
    except AttnlabError as exc:
        print(f"attnlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------------ commands
def train_config_from_args(args: argparse.Namespace):
    """Config file < saved run config (when resuming) < flags given on the command line."""
    from .training.config import TrainConfig, read_config_file

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "set")}
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    if given.get("resume"):
        out_dir = Path(given.get("out_dir") or values.get("out_dir") or TrainConfig(**{
            k: v for k, v in {**values, **given}.items() if k in ("model", "preset")}).run_dir)
        saved = out_dir / "train_config.json"
        if saved.is_file():
            values = {**json.loads(saved.read_text()), **values}
    values.update(given)
    overrides = {**values.get("model_overrides", {}), **_parse_overrides(args.set)}
    values["model_overrides"] = overrides
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .training import train

    cfg = train_config_from_args(args)
    console = Console(stderr=True)
    result = train(cfg, console)
    if int(os.environ.get("RANK", "0")) == 0:
        val = result.val
        summary = f"done: step {result.step}, {result.tokens_seen:,} tokens in {result.elapsed_s / 60:.1f} min"
        if val:
            summary += f"; val loss {val['loss']:.4f}, bits/byte {val['bpb']:.4f}"
        console.print(summary)
        console.print(f"saved to {result.run_dir}  (attnlab generate {result.run_dir} --prompt 'ROMEO:')")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import evaluate

    metrics = evaluate(args.run, args.data, split=args.split, val_fraction=args.val_fraction,
                       text_field=args.text_field, block_size=args.block_size, batch_size=args.batch_size,
                       max_tokens=args.max_tokens, device=args.device, dtype=args.dtype, memory=args.memory)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.split}: loss {metrics['loss']:.4f}  ppl {metrics['ppl']:.2f}  "
              f"bits/byte {metrics['bpb']:.4f}  ({metrics['tokens']:,} tokens)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .api import generate

    generate(args.run, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed, device=args.device,
             stream=True)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .api import info

    report = info(args.run, args.model, args.preset, **_parse_overrides(args.set))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['family']} ({report['model_type']}): {report['parameters']:,} parameters "
          f"({report['parameters'] / 1e6:.2f}M; {report['non_embedding_parameters']:,} without embeddings)")
    for name, count in report["by_component"].items():
        print(f"  {name:<24} {count:>14,}")
    print(json.dumps(report["config"], indent=2, sort_keys=True))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .models.dat.convert import convert_dat_checkpoint

    if not Path(args.source).is_file():
        raise DataError(f"checkpoint not found: {args.source}")
    model = convert_dat_checkpoint(args.source, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.source} → {args.out} ({type(model).__name__}, {n:,} parameters)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import FAMILIES

    if args.options:
        return _print_family_options(args.options)
    for family in FAMILIES.values():
        print(f"{family.name:<8} {family.description}")
        for name, preset in family.presets.items():
            print(f"    {name:<12} {', '.join(f'{k}={v}' for k, v in preset.items())}")
    return 0


def _print_family_options(name: str) -> int:
    """A family's own options, then the skeleton's with the family's defaults: everything ``--set`` accepts."""
    from .models.config import AttnLabConfig, declared_options, option_docs, own_options
    from .models.registry import get_family

    config_class = get_family(name).config_class
    own = own_options(config_class)
    shared = [n for n in declared_options(AttnLabConfig) if n not in own]
    print(f"{name} options ({config_class.__name__}; attnlab train --set KEY=VALUE, or model_overrides in a config):")
    _print_options(option_docs(config_class, own) if own else [])
    print("skeleton options, shared by every family:")
    _print_options(option_docs(config_class, shared))
    return 0


def _print_options(docs: list) -> None:
    import shutil
    import textwrap

    if not docs:
        print("  (none of its own)")
    width = max(60, shutil.get_terminal_size().columns)
    for doc in docs:
        head = f"  {doc.name:<20} {doc.default.replace('`', '')}"
        body = textwrap.wrap(doc.help.replace("`", ""), width - 6)
        print(head)
        for line in body:
            print(f"      {line}")


if __name__ == "__main__":
    sys.exit(main())
