"""Markdown option tables generated from where the options are declared, and the docs blocks they fill.

The docs mark a generated block with ``<!-- BEGIN GENERATED: NAME -->`` … ``<!-- END GENERATED: NAME -->``; the
text between is rewritten from the code, so it cannot drift from it. Names:

* ``train-options``: every ``TrainConfig`` field, by group (``attnlab train``'s flags);
* ``options-shared``: the skeleton's options (``AttnLabConfig``);
* ``options-FAMILY``: what a family (or model kind, ``dat-seq2seq``...) adds to or changes in the options of
  the config it extends;
* ``cli-COMMAND``: the arguments of one subcommand's parser (``cli-eval``, ``cli-bench``...).

Regenerate every block with ``python -m attnlab.optiondocs`` (``--check`` only reports stale files).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from .options import OptionDoc, format_default, groups
from .options import option_docs as dataclass_option_docs

DOCS = Path(__file__).resolve().parent.parent / "docs"
REGENERATE = "python -m attnlab.optiondocs"
BLOCK = re.compile(
    r"<!-- BEGIN GENERATED: (?P<name>[\w.-]+) -->\n?(?P<body>.*?)<!-- END GENERATED: (?P=name) -->", re.DOTALL
)
BEGIN = re.compile(r"<!-- BEGIN GENERATED: ([\w.-]+) -->")


# ------------------------------------------------------------------------------------------ Markdown
def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    """Inline code, with a fence long enough for backticks inside it."""
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if text else ""


def _default_cell(doc: OptionDoc) -> str:
    """Literal defaults as code; derived ones ("lr/10", "the model's") and none ("–") as text."""
    return _code(doc.default) if doc.literal and doc.default != "–" else doc.default


def options_table(docs: list[OptionDoc]) -> str:
    """``| option | default | meaning |`` for model config options (what ``--set`` and configs take)."""
    return markdown_table(["option", "default", "meaning"],
                          [[_code(d.name), _default_cell(d), d.help] for d in docs])


# ------------------------------------------------------------------------------------------ training options
def _train_flag(f: dataclasses.Field) -> str:
    """A ``TrainConfig`` field as ``attnlab train`` spells it: ``--max-steps N``, ``--compile``/``--no-compile``."""
    flag, metavar = f.metadata.get("flag") or "--" + f.name.replace("_", "-"), f.metadata.get("metavar")
    if str(f.type) == "bool":
        return f"{_code(flag)}, {_code('--no-' + flag[2:])}"
    return _code(f"{flag} {metavar}" if metavar else flag)


def train_options_markdown() -> str:
    """Every ``attnlab train`` flag by group, with its ``TrainConfig`` field name, default and help."""
    from .training.config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    sections = []
    for group, docs in groups(dataclass_option_docs(TrainConfig)).items():
        rows = [[_train_flag(fields[d.name]), _code(d.name), _default_cell(d), d.help] for d in docs]
        table = markdown_table(["flag", "config key", "default", "meaning"], rows)
        sections.append(f"#### {group.capitalize()}\n\n{table}")
    return "\n\n".join(sections)


# ------------------------------------------------------------------------------------------ model options
def shared_options_markdown() -> str:
    """The skeleton's options, shared by every family."""
    from .models.config import AttnLabConfig, declared_options, option_docs

    return options_table(option_docs(AttnLabConfig, declared_options(AttnLabConfig)))


def family_options_markdown(name: str) -> str:
    """A family's (or model kind's) own options, the skeleton options it gives another default or meaning, and
    its aliases."""
    from .models.config import option_docs, own_options
    from .models.registry import get_model_kind

    config_class = get_model_kind(name).config_class
    names = own_options(config_class)
    if not names:
        return f"`{config_class.__name__}` adds no options: every skeleton option applies, with its default."
    return options_table(option_docs(config_class, names))


# ------------------------------------------------------------------------------------------ subcommands
def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of every ``attnlab`` subcommand, by name, in the order ``attnlab --help`` lists them."""
    from .cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _argument(action: argparse.Action) -> str:
    """How an argument is written: ``RUN``, ``--top-k K``, ``--plots``/``--no-plots``, ``--split {val,train}``."""
    if not action.option_strings:
        name = action.metavar or action.dest.upper()
        return _code({"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} ..."}.get(action.nargs, name))
    if action.nargs == 0:
        return ", ".join(_code(flag) for flag in action.option_strings)
    metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices
                                 else action.dest.upper().replace(".", "_"))
    suffix = " ..." if action.nargs in ("+", "*") else ""
    return ", ".join(_code(f"{flag} {metavar}{suffix}") for flag in action.option_strings)


def _argument_default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS, []) or not action.option_strings:
        return "–"
    text = format_default(action.default)
    return text if isinstance(action.default, bool) else _code(text)


def parser_markdown(command: str) -> str:
    """The arguments of one subcommand's parser as a table: argument, default, meaning."""
    parsers = subcommand_parsers()
    if command not in parsers:
        raise ValueError(f"no attnlab subcommand {command!r}; there are {', '.join(parsers)}")
    actions = [a for a in parsers[command]._actions if not isinstance(a, argparse._HelpAction)]
    rows = [[_argument(a), _argument_default(a), (a.help or "").replace("%%", "%")] for a in actions]
    return markdown_table(["argument", "default", "meaning"], rows)


# ------------------------------------------------------------------------------------------ docs blocks
def render(name: str) -> str:
    """The Markdown of the generated block ``name``."""
    if name == "train-options":
        return train_options_markdown()
    if name == "options-shared":
        return shared_options_markdown()
    if name.startswith("options-"):
        return family_options_markdown(name.removeprefix("options-"))
    if name.startswith("cli-"):
        return parser_markdown(name.removeprefix("cli-"))
    raise ValueError(f"unknown generated block {name!r}: use train-options, options-shared, options-FAMILY "
                     "or cli-COMMAND")


def regenerate(text: str) -> str:
    """``text`` with the body of every generated block rewritten; text outside the blocks is kept as is."""
    opened, closed = BEGIN.findall(text), [m.group("name") for m in BLOCK.finditer(text)]
    if opened != closed:
        unclosed = sorted(set(opened) - set(closed)) or opened
        raise ValueError(f"generated block(s) without a matching END marker: {', '.join(unclosed)}")
    return BLOCK.sub(lambda m: _block(m.group("name")), text)


def _block(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} -->\n{render(name)}\n<!-- END GENERATED: {name} -->"


def pages(root: Path = DOCS) -> list[Path]:
    """The Markdown pages under ``root`` that hold at least one generated block."""
    return [p for p in sorted(root.rglob("*.md")) if BEGIN.search(p.read_text(encoding="utf-8"))]


def stale_pages(root: Path = DOCS) -> list[Path]:
    """Pages whose generated blocks differ from what the code generates now."""
    return [p for p in pages(root) if regenerate(p.read_text(encoding="utf-8")) != p.read_text(encoding="utf-8")]


def write_pages(root: Path = DOCS) -> list[Path]:
    """Rewrite the generated blocks of every page under ``root``; the pages that changed."""
    changed = stale_pages(root)
    for page in changed:
        page.write_text(regenerate(page.read_text(encoding="utf-8")), encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Regenerate the option tables in the docs.")
    parser.add_argument("--docs", type=Path, default=DOCS, help="docs folder (default: the repository's docs/)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages(args.docs)
        for page in stale:
            print(f"stale: {page} (run {REGENERATE})", file=sys.stderr)
        return 1 if stale else 0
    for page in write_pages(args.docs):
        print(f"regenerated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
