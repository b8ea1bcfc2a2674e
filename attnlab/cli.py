"""The ``attnlab`` command line: train, eval, generate, info, models.

Every training option is a field of ``TrainConfig``; the ``train`` flags are generated from it, so the CLI,
config files and the Python API can never disagree. User mistakes end in one line on stderr and exit code 2.
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

TRAIN_HELP = {
    "model": "model family (see `attnlab models`)",
    "preset": "named size of the family, e.g. debug, tiny, small",
    "data": "'shakespeare' (built in), a .txt/.md file or folder, .jsonl/.parquet, or hf:NAME[:CONFIG]",
    "text_field": "field holding the text in JSONL/parquet/HF records",
    "hf_config": "Hugging Face dataset config name",
    "hf_split": "Hugging Face dataset split",
    "max_docs": "read at most this many documents (HF streaming)",
    "tokenizer": "'byte' (256 ids), 'bpe' (trained on the data), or a pretrained HF tokenizer name/path",
    "vocab_size": "vocabulary size of the trained BPE tokenizer",
    "val_fraction": "fraction of the token stream (its tail) held out for validation",
    "batch_size": "sequences per micro-batch and process",
    "block_size": "context length in tokens (default: the model's)",
    "tokens_per_step": "target tokens per optimizer step; sets gradient accumulation",
    "optimizer": "adamw or sophia (SophiaG: clipped diagonal-Hessian steps; try --beta1 0.965 --beta2 0.99)",
    "max_steps": "optimizer steps",
    "lr": "peak learning rate",
    "min_lr": "final learning rate of the cosine decay (default lr/10)",
    "warmup_steps": "linear warmup steps",
    "weight_decay": "decoupled weight decay (matrices only)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm (0 = off)",
    "decay_embeddings": "apply weight decay to embeddings too",
    "sophia_rho": "SophiaG rho: the step is clipped where |momentum| > rho * hessian",
    "hessian_interval": "SophiaG: refresh the Hessian estimate (labels sampled from the model) every N steps",
    "segment_stream": "Transformer-XL training (models with mem_len): rows read consecutive segments, memory carried",
    "warm_start": "copy the input embeddings and tokenizer of a HF causal LM (path or hub name)",
    "device": "auto, cpu, cuda, cuda:1, mps",
    "dtype": "float32 or bfloat16 (autocast)",
    "compile": "torch.compile the model",
    "seed": "seed for weights, batches and dropout",
    "eval_interval": "validate (and sample) every N steps",
    "eval_tokens": "validation tokens per evaluation",
    "log_interval": "log training loss every N steps",
    "checkpoint_interval": "checkpoint every N steps (default: eval_interval)",
    "sample_tokens": "tokens generated at each validation (0 = none)",
    "sample_prompt": "prompt of those samples",
    "out_dir": "run directory (default runs/MODEL-PRESET)",
    "resume": "continue the run in --out-dir from its last checkpoint",
    "max_minutes": "stop (checkpointed, resumable) after this many minutes",
    "stop_at_step": "stop (checkpointed, resumable) at this step without changing the schedule",
    "progress": "show a progress bar",
    "tensorboard": "also log to TensorBoard when it is installed",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def train_option_type(name: str) -> type:
    """The Python type of a ``TrainConfig`` field (``int | None`` → int), for its command-line flag."""
    from .training.config import TrainConfig

    kind = str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))
    return bool if kind == "bool" else int if kind.startswith("int") else float if kind.startswith("float") else str


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from .training.config import TrainConfig

    parser.add_argument("--config", help="YAML or JSON file of training options")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="model config override, repeatable"
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_overrides":
            continue
        flag, cast = "--" + f.name.replace("_", "-"), train_option_type(f.name)
        if cast is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=TRAIN_HELP.get(f.name))
        else:
            parser.add_argument(flag, type=cast, default=argparse.SUPPRESS, help=TRAIN_HELP.get(f.name))


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

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a saved run on a dataset")
    p.add_argument("run", help="run directory or HF model directory")
    p.add_argument("--data", default="shakespeare")
    p.add_argument("--text-field", default="text")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--block-size", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--memory", action="store_true",
                   help="XL-memory models: read the split as streams of consecutive segments, carrying memory")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("generate", help="stream text from a saved run")
    p.add_argument("run", help="run directory or HF model directory")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("info", help="parameter counts and config of a run, or of a family preset")
    p.add_argument("run", nargs="?", help="run directory (or omit and give --model/--preset)")
    p.add_argument("--model", default="gpt")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("convert", help="convert another implementation's checkpoint into an attnlab model")
    p.add_argument("kind", choices=["dat-checkpoint"], help="dat-checkpoint: the dual-attention package's .pt")
    p.add_argument("source", help="checkpoint file")
    p.add_argument("out", help="output model directory")

    sub.add_parser("models", help="list model families and their presets")

    from .bench.cli import add_bench_parser, add_compare_parser
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
    from .bench.cli import cmd_bench, cmd_compare
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

    for family in FAMILIES.values():
        print(f"{family.name:<8} {family.description}")
        for name, preset in family.presets.items():
            print(f"    {name:<8} {', '.join(f'{k}={v}' for k, v in preset.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
