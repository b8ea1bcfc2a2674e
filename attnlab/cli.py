"""The ``attnlab`` command line: train, eval, generate, info, convert, export, models (and bench, compare, viz).

Every training option is a field of ``TrainConfig`` that carries its own help; the ``train`` flags and their
``--help`` are generated from those fields, so the CLI, config files, the Python API and docs/cli.md can never
disagree. User mistakes end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
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

    _add_eval_parser(sub)

    p = sub.add_parser("generate", help="stream text from a saved run", formatter_class=_DefaultsFormatter)
    p.add_argument("run", help="run directory or HF model directory")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="text to continue; repeat for several prompts, generated in batches (default: a newline)")
    p.add_argument("--prompts-file", metavar="FILE", help="a text file of prompts, one per line (blank lines skipped)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="prompts generated together (left-padded; greedy output is the same as one by one)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                   help="tokens to generate after each prompt (fewer when the text ends)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="sampling temperature, > 0")
    p.add_argument("--top-k", type=int, default=50, metavar="K", help="sample among the K likeliest tokens; 0: all")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: the likeliest tokens whose probabilities add up to P")
    p.add_argument("--greedy", action="store_true",
                   help="greedy decoding: always the likeliest token (temperature, top-k and top-p unused)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the sampling")
    p.add_argument("--device", default="auto", help="where to run: auto (a GPU when there is one), cpu, cuda, "
                                                     "cuda:1, mps")

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

    p = sub.add_parser("export",
                       help="a self-contained HF model folder that loads without attnlab; push it to the hub")
    p.add_argument("run", help="run directory or HF model directory saved by attnlab")
    p.add_argument("out", help="new (or empty) folder to write")
    p.add_argument("--push-to-hub", metavar="REPO_ID",
                   help="upload the folder to this Hugging Face Hub model repository")
    p.add_argument("--private", action="store_true",
                   help="create the hub repository as private (with --push-to-hub)")

    p = sub.add_parser("models", help="list model families and their presets", formatter_class=_DefaultsFormatter)
    p.add_argument("--options", metavar="FAMILY",
                   help="list the family's model config options (`--set KEY=VALUE`), with defaults and help")

    from .bench.cli import add_bench_parser
    from .compare.cli import add_compare_parser
    from .experiments.cli import add_experiment_parser
    from .viz.cli import add_viz_parser

    add_bench_parser(sub)
    add_compare_parser(sub)
    add_experiment_parser(sub)
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
    from .experiments.cli import cmd_experiment
    from .viz.cli import cmd_viz

    commands = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "info": cmd_info,
                "convert": cmd_convert, "export": cmd_export, "models": cmd_models, "bench": cmd_bench,
                "compare": cmd_compare, "experiment": cmd_experiment, "viz": cmd_viz}
    try:
        return commands[args.command](args)
    except AttnlabError as exc:
        print(f"attnlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only directory, a file where a directory belongs: not a bug
        print(f"attnlab {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def os_error_line(exc: OSError) -> str:
    """An operating-system error in one line: the file, what the system said, what to check."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc} (check free space, permissions and the path)"


# ------------------------------------------------------------------------------------------ commands
def train_config_from_args(args: argparse.Namespace):
    """Saved run config (when resuming) < config file < flags given on the command line."""
    from .training.config import TrainConfig, read_config_file

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "set")}
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    if given.get("resume"):
        values = {**_saved_run_options({**values, **given}), **values}
    values.update(given)
    overrides = {**values.get("model_overrides", {}), **_parse_overrides(args.set)}
    values["model_overrides"] = overrides
    return TrainConfig.from_dict(values)


def _saved_run_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options the run in ``values``' run directory was last started with, less those of one invocation
    (a resume does not stop again at the saved ``stop_at_step``, nor allow a schedule change it was not given)."""
    from .loading import read_run_file
    from .training.config import PER_INVOCATION, TrainConfig

    where = {k: v for k, v in values.items() if k in ("model", "preset", "init_from", "out_dir")}
    run_dir = TrainConfig(**where).run_dir
    if not (run_dir / "train_config.json").exists() and not (run_dir / "checkpoints").is_dir():
        return {}  # nothing to resume: the trainer says so
    return {k: v for k, v in read_run_file(run_dir, "train_config.json").items() if k not in PER_INVOCATION}


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .errors import TrainingInterrupted
    from .training import train

    cfg = train_config_from_args(args)
    console = Console(stderr=True)
    try:
        result = train(cfg, console)
    except TrainingInterrupted as exc:  # SIGTERM/SIGINT: checkpointed at a step boundary, exit 128 + signal
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"attnlab train: {exc}", file=sys.stderr)
        return exc.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        val = result.val
        summary = f"done: step {result.step}, {result.tokens_seen:,} tokens in {result.elapsed_s / 60:.1f} min"
        if val:
            summary += f"; val loss {val['loss']:.4f}, bits/byte {val['bpb']:.4f}"
        console.print(summary)
        command = ["attnlab", "generate", str(result.run_dir)]
        if result.prompt.strip():
            command += ["--prompt", result.prompt]  # the opening words of the run's own validation text
        console.print(f"saved to {result.run_dir}  ({shlex.join(command)})", markup=False, highlight=False,
                      soft_wrap=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a split of a dataset (by default the run's own validation), or run lm-eval tasks with --tasks."""
    _check_eval_flags(args)
    return _eval_tasks(args) if args.tasks else _eval_split(args)


def _check_eval_flags(args: argparse.Namespace) -> None:
    """Flags of one mode given to the other are refused rather than silently ignored."""
    other_mode, where = (_SPLIT_FLAGS, "to scoring a dataset, not to --tasks") if args.tasks else \
        (_TASK_FLAGS, "to --tasks only")
    given = [flag for flag, dest in other_mode.items() if getattr(args, dest) not in (None, False)]
    if given:
        raise ConfigError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {where}")
    if args.full and args.eval_tokens is not None:
        raise ConfigError("give either --eval-tokens or --full, not both")


def _eval_split(args: argparse.Namespace) -> int:
    from .api import evaluate

    metrics = evaluate(args.run, args.data, split=args.split or "val", val_fraction=args.val_fraction,
                       text_field=args.text_field, hf_config=args.hf_config, hf_split=args.hf_split,
                       max_docs=args.max_docs, block_size=args.block_size, batch_size=args.batch_size,
                       max_tokens=args.eval_tokens, full=args.full, device=args.device, dtype=args.dtype,
                       memory=args.memory, progress=args.progress)
    if args.json:
        print(json.dumps(metrics))
        return 0
    source = metrics["data"] + (" (the run's data)" if args.data is None else "")
    print(f"{metrics['split']} split of {source}: loss {metrics['loss']:.4f}  ppl {metrics['ppl']:.2f}  "
          f"bits/byte {metrics['bpb']:.4f}  ({metrics['tokens']:,} of {metrics['split_tokens']:,} tokens)")
    return 0


def _eval_tasks(args: argparse.Namespace) -> int:
    from .evaluation import saved_train_options
    from .harness import evaluate_tasks, format_table, metric_rows, require_lm_eval, write_results

    require_lm_eval()
    saved = saved_train_options(args.run)
    results = evaluate_tasks(args.run, args.tasks, num_fewshot=args.num_fewshot, limit=_limit(args.limit),
                             batch_size=args.batch_size or saved.get("batch_size", 8),
                             include_path=args.include_path, device=args.device,
                             dtype=args.dtype or saved.get("dtype", "float32"))
    rows = metric_rows(results)
    print(json.dumps(rows) if args.json else format_table(rows))
    if args.output:
        print(f"results written to {write_results(results, args.output)}", file=sys.stderr)
    return 0


def _limit(value: float | None) -> int | float | None:
    """lm-eval's --limit: a whole number of documents per task, or below 1 a fraction of each task."""
    if value is not None and value <= 0:
        raise ConfigError(f"--limit must be positive, got {value:g}")
    return int(value) if value is not None and value >= 1 else value


# flags of one `attnlab eval` mode (flag → argparse dest); the other mode refuses them
_SPLIT_FLAGS = {"--data": "data", "--text-field": "text_field", "--hf-config": "hf_config", "--hf-split": "hf_split",
                "--max-docs": "max_docs", "--split": "split", "--val-fraction": "val_fraction",
                "--block-size": "block_size", "--eval-tokens": "eval_tokens", "--full": "full", "--memory": "memory"}
_TASK_FLAGS = {"--num-fewshot": "num_fewshot", "--limit": "limit", "--include-path": "include_path",
               "--output": "output"}


def _add_eval_parser(sub) -> None:
    """``attnlab eval``: a run's loss and bits per byte on a split, by default exactly its own validation; or
    lm-evaluation-harness tasks with ``--tasks``. Defaults of None come from the run's train_config.json."""
    p = sub.add_parser("eval", help="bits per byte of a saved run on its validation split or a dataset; "
                                    "lm-eval tasks with --tasks", formatter_class=_DefaultsFormatter)
    p.add_argument("run", help="run directory or HF model directory")
    g = p.add_argument_group("scoring a dataset (default: the run's own, as its validation scored it)")
    g.add_argument("--data", metavar="SOURCE",
                   help="dataset, as for `attnlab train --data` (default: the run's, from its train_config.json; "
                        "a model directory without one needs it)")
    g.add_argument("--text-field", metavar="NAME",
                   help="field holding the text in JSONL/JSON/parquet/HF records (default: the run's when scoring "
                        "its data, else text)")
    g.add_argument("--hf-config", metavar="NAME",
                   help="Hugging Face dataset config name (default: the run's when scoring its data)")
    g.add_argument("--hf-split", metavar="SPLIT",
                   help="Hugging Face dataset split (default: the run's when scoring its data, else train)")
    g.add_argument("--max-docs", type=int, metavar="N",
                   help="read at most this many documents (default: the run's when scoring its data; 100000 for "
                        "HF datasets)")
    g.add_argument("--split", choices=["val", "train"],
                   help="`val` (the held-out tail of the token stream) or `train` (default: val)")
    g.add_argument("--val-fraction", type=float, metavar="F",
                   help="fraction of the token stream, its tail, held out for validation (default: the run's, "
                        "else 0.1)")
    g.add_argument("--block-size", type=int, metavar="N",
                   help="context length in tokens (default: the run's, else the model's)")
    g.add_argument("--eval-tokens", "--max-tokens", type=int, metavar="N",
                   help="score the first N tokens of the split (default: the run's eval_tokens, the budget of its "
                        "validation; without a run, the whole split)")
    g.add_argument("--full", action="store_true", help="score the whole split")
    g.add_argument("--memory", action=argparse.BooleanOptionalAction,
                   help="XL-memory models: read the split as streams of consecutive segments, carrying memory "
                        "(default: as the run trained, with --segment-stream or not)")
    g = p.add_argument_group("lm-evaluation-harness (pip install attnlab[eval])")
    g.add_argument("--tasks", metavar="T1,T2",
                   help="run these lm-eval tasks or groups instead (comma-separated, globs allowed) and print "
                        "their metrics")
    g.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples per prompt (default: each task's)")
    g.add_argument("--limit", type=float, metavar="N",
                   help="score at most N documents per task; below 1, that fraction of each task")
    g.add_argument("--include-path", metavar="DIR", help="a folder of task YAMLs to add to lm-eval's own")
    g.add_argument("--output", metavar="FILE", help="write lm-eval's full results (task configs included) as JSON")
    g = p.add_argument_group("either way")
    g.add_argument("--batch-size", type=int, metavar="N", help="sequences per batch (default: the run's, else 8)")
    g.add_argument("--device", default="auto",
                   help="where to run: auto (a GPU when there is one), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="`float32`, or `bfloat16` autocast (default: the run's, else float32)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar while scoring a dataset")
    g.add_argument("--json", action="store_true",
                   help="print the metrics as JSON: one object, or with --tasks a list of rows")


def cmd_generate(args: argparse.Namespace) -> int:
    from .api import generate, generate_batch

    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise DataError(f"prompts file not found: {path}")
        prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, greedy=args.greedy, seed=args.seed, device=args.device)
    if len(prompts) <= 1:  # one prompt streams as it is generated
        generate(args.run, prompts[0] if prompts else "\n", stream=True, **options)
        return 0
    for index, text in enumerate(generate_batch(args.run, prompts, batch_size=args.batch_size, **options)):
        print(f"===== prompt {index + 1} =====\n{text}\n")
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


def cmd_export(args: argparse.Namespace) -> int:
    from .errors import ExportError
    from .export import export_run, push_folder

    if args.private and not args.push_to_hub:
        raise ExportError("--private applies to the hub repository: give --push-to-hub REPO_ID too")
    result = export_run(args.run, args.out, repo_id=args.push_to_hub)
    print(f"exported {args.run} → {result.folder} ({result.model_class}, {len(result.code_files)} code files"
          f"{'' if result.tokenizer else ', no tokenizer'}); load it with "
          f"AutoModelForCausalLM.from_pretrained({str(result.folder)!r}, trust_remote_code=True)")
    if args.push_to_hub:
        print(f"pushed to {push_folder(result.folder, args.push_to_hub, private=args.private)}")
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
