"""Named, checked-in benchmark suites: ``benchmarks/suites/NAME.yaml``.

A suite is a YAML mapping with ``command: bench`` (the keys of ``BenchConfig``) or ``command: compare`` (the
keys of ``CompareConfig``). ``--suite`` takes a name from that folder or a path to such a file; flags given
on the command line override the suite's values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .env import REPO_ROOT

SUITE_DIRS = (Path.cwd() / "benchmarks" / "suites", REPO_ROOT / "benchmarks" / "suites")


def available_suites() -> list[str]:
    names = set()
    for folder in SUITE_DIRS:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def find_suite(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in SUITE_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"unknown suite {name!r}; choose one of {available_suites()} or give a .yaml path")


def load_suite(name: str, command: str) -> dict[str, Any]:
    """The suite's options for ``command`` (bench or compare), without the ``command`` key."""
    import yaml

    path = find_suite(name)
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse suite {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"suite {path} must be a mapping of option: value")
    kind = values.pop("command", "bench")
    if kind != command:
        raise ConfigError(f"suite {path.stem!r} is a {kind} suite; run it with `attnlab {kind} --suite {path.stem}`")
    values.setdefault("name", path.stem)
    return values
