"""Option dataclasses (training, bench, compare) read from flags, YAML/JSON files and saved runs.

Each option is documented once, where it is declared: a dataclass field made with ``option()`` carries its help
text, group and (for derived defaults) the default as users should read it. Command-line flags, ``--help`` and
the generated docs tables (``attnlab.optiondocs``) all read that one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from typing import Any, Callable, ClassVar, NamedTuple

from .errors import ConfigError


class Options:
    """Mixin for a dataclass of user options: plain-dict round trip, unknown keys are a one-line error."""

    option_kind: ClassVar[str] = "option"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {cls.option_kind} option(s): {', '.join(sorted(unknown))}")
        return cls(**values)


class Help(NamedTuple):
    """Help text of an option whose default is derived from other options (``default`` says how)."""

    text: str
    default: str


class OptionDoc(NamedTuple):
    """One documented option as the CLI and the docs show it; ``literal``: the default is a value one could type,
    not a description of a derived one."""

    name: str
    default: str
    help: str
    group: str = ""
    literal: bool = True


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    group: str,
    shown_default: str | None = None,
    metavar: str | None = None,
    flag: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field that carries its own documentation, so flags, ``--help`` and docs never disagree.

    ``shown_default`` replaces the literal default where that is a placeholder (None meaning "lr/10", "the
    model's"...); ``metavar`` names the flag's value in ``--help``; ``flag`` is the command-line flag where it
    is not ``--field-name``.
    """
    if not help:
        raise ValueError("every option needs its help text")
    metadata = {"help": help, "group": group, "shown_default": shown_default, "metavar": metavar, "flag": flag}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def format_default(value: Any, booleans: tuple[str, str] = ("on", "off")) -> str:
    """A default as the docs print it: booleans as on/off (flags) or true/false (config values), None as a dash,
    strings with visible escapes."""
    if isinstance(value, bool):
        return booleans[0] if value else booleans[1]
    if value is None:
        return "–"
    if isinstance(value, str):
        return repr(value)[1:-1] if value else '""'
    return repr(value)


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field, calling its factory when it has one."""
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is MISSING else f.default


def shown_default(f: dataclasses.Field) -> str:
    """The default of an ``option()`` field as users should read it."""
    return f.metadata.get("shown_default") or format_default(field_default(f))


def option_docs(cls: type) -> list[OptionDoc]:
    """Every field of an ``option()``-built dataclass, in declaration order, with its help and shown default."""
    return [OptionDoc(f.name, shown_default(f), f.metadata.get("help", ""), f.metadata.get("group", ""),
                      literal=not f.metadata.get("shown_default"))
            for f in dataclasses.fields(cls)]


def groups(docs: list[OptionDoc]) -> dict[str, list[OptionDoc]]:
    """Options by group, groups in the order they first appear."""
    grouped: dict[str, list[OptionDoc]] = {}
    for doc in docs:
        grouped.setdefault(doc.group, []).append(doc)
    return grouped
