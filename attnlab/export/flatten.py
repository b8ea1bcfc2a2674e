"""The modeling code of an exported model: attnlab's own modules, found through their imports, as flat files.

transformers' remote-code loader (``trust_remote_code=True``) imports the code of a model folder as flat
modules that import each other with ``from .module import name``, and refuses a file that imports a package
which is not installed (it reads every import, those inside functions too). So the export starts at the
family's modeling and configuration modules, follows their imports inside attnlab (the import closure, read
with ``ast`` from the package's own source, never from a hand-kept copy), names each module by the shortest
tail of its dotted path that is unique in the closure (``attnlab.layers.leap`` → ``leap``, or
``layers_leap`` beside ``attnlab.ops.leap``) and rewrites each attnlab import to that flat name. Everything
else the closure imports must be the standard library, torch or transformers.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError

PACKAGE = "attnlab"
REQUIREMENTS = ("torch", "transformers")  # the only installed packages an exported model needs
ALLOWED = frozenset(sys.stdlib_module_names) | {"__future__", *REQUIREMENTS}
_FROM = re.compile(r"from\s+([.\w]+)")


@dataclass(frozen=True)
class Import:
    """One ``from <attnlab module> import ...`` statement and the module it reads from."""

    node: ast.ImportFrom
    target: str


@dataclass(frozen=True)
class ModuleCode:
    """An attnlab module of the closure: its dotted name, file, source text and attnlab imports."""

    name: str
    path: Path
    source: str
    imports: tuple[Import, ...]

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def package_root() -> Path:
    """The folder of the attnlab package whose source is exported (this installation's)."""
    return Path(__file__).resolve().parent.parent


def is_internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def module_file(name: str) -> Path | None:
    """The source file of an attnlab module or package, or None when there is none."""
    parts = name.split(".")[1:]
    base = package_root().joinpath(*parts)
    candidates = ([base.with_suffix(".py")] if parts else []) + [base / "__init__.py"]
    return next((path for path in candidates if path.is_file()), None)


def _resolve(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` of module ``name`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    if node.level - 1 >= len(base):
        raise ExportError(f"{name}: relative import beyond the top of the {PACKAGE} package")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _where(name: str, node: ast.stmt) -> str:
    return f"{name} (line {node.lineno})"


def _check_internal(name: str, node: ast.ImportFrom, target: str) -> None:
    """The import forms a flat folder can express: names from a module other than the package itself."""
    if target == PACKAGE:
        raise ExportError(f"{_where(name, node)} imports from the {PACKAGE} package itself, which pulls in "
                          "everything; import from the module that defines the name")
    for alias in node.names:
        if alias.name != "*" and module_file(f"{target}.{alias.name}") is not None:
            raise ExportError(f"{_where(name, node)} imports the module {target}.{alias.name} itself; the "
                              "remote-code loader only follows `from .module import name`: import its names")


def scan_imports(name: str, is_package: bool, tree: ast.Module) -> tuple[Import, ...]:
    """The attnlab imports of a module, anywhere in it (functions included); an ``ExportError`` for an import
    the exported folder could not satisfy: a package other than the standard library, torch or transformers,
    or an attnlab import form the loader cannot follow."""
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _check_external(name, node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, is_package, node)
            if is_internal(target):
                _check_internal(name, node, target)
                imports.append(Import(node, target))
            else:
                _check_external(name, node, target)
    return tuple(imports)


def _check_external(name: str, node: ast.stmt, imported: str) -> None:
    top = imported.split(".")[0]
    if top == PACKAGE:
        raise ExportError(f"{_where(name, node)}: `import {imported}` cannot be made relative; use "
                          f"`from .module import name` inside {PACKAGE}")
    if top not in ALLOWED:
        raise ExportError(f"{_where(name, node)} imports {top!r}; exported modeling code may only import the "
                          f"standard library and {' and '.join(REQUIREMENTS)}")


def read_module(name: str) -> ModuleCode:
    path = module_file(name)
    if path is None:
        raise ExportError(f"no source file for {name} under {package_root()}")
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    return ModuleCode(name, path, source, scan_imports(name, path.name == "__init__.py", tree))


def import_closure(roots: list[str]) -> dict[str, ModuleCode]:
    """Every attnlab module the roots import, directly or not, by dotted name."""
    found: dict[str, ModuleCode] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in found:
            found[name] = read_module(name)
            todo += [imp.target for imp in found[name].imports]
    return dict(sorted(found.items()))


def flat_names(modules: list[str]) -> dict[str, str]:
    """A file name (without ``.py``) per module: the shortest tail of its dotted path, joined by ``_``, that
    no other module of the closure shares."""
    parts = {m: m.split(".")[1:] or [PACKAGE] for m in modules}
    depth = dict.fromkeys(modules, 1)
    while True:
        names = {m: "_".join(parts[m][-depth[m]:]) for m in modules}
        clashing = [m for m in modules if list(names.values()).count(names[m]) > 1]
        if not clashing:
            return names
        grown = [m for m in clashing if depth[m] < len(parts[m])]
        if not grown:
            raise ExportError(f"modules {', '.join(clashing)} have no distinct flat file names")
        for m in grown:
            depth[m] += 1


def flat_source(code: ModuleCode, names: dict[str, str]) -> str:
    """The module's source with every attnlab import turned into ``from .<flat name> import ...``; the rest of
    each statement (names, aliases, layout) is kept as it is."""
    lines = code.source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    edits = []
    for imp in code.imports:
        line = lines[imp.node.lineno - 1]
        column = len(line.encode("utf-8")[: imp.node.col_offset].decode("utf-8"))  # ast counts UTF-8 bytes
        match = _FROM.match(code.source, starts[imp.node.lineno - 1] + column)
        if match is None:
            raise ExportError(f"{_where(code.name, imp.node)}: cannot rewrite this import")
        edits.append((match.start(1), match.end(1), "." + names[imp.target]))
    text = code.source
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def write_modeling_code(model_class: type, config_class: type, folder: Path, header: str) -> dict[str, str]:
    """Write the flat modules the model and config classes need into ``folder``; return the ``auto_map``
    entries of ``config.json`` that point transformers at the two classes.

    ``header`` is a comment put above each file, with ``{source}`` standing for the module's path in attnlab.
    """
    roots = {"AutoConfig": config_class, "AutoModelForCausalLM": model_class}
    for cls in roots.values():
        if not is_internal(cls.__module__):
            raise ExportError(f"{cls.__name__} is defined in {cls.__module__}, outside {PACKAGE}; only "
                              f"{PACKAGE}'s own families can be exported")
    closure = import_closure(sorted({cls.__module__ for cls in roots.values()}))
    names = flat_names(list(closure))
    for name, code in closure.items():
        source = code.path.relative_to(package_root().parent).as_posix()
        text = header.format(source=source) + flat_source(code, names)
        (folder / f"{names[name]}.py").write_text(text, encoding="utf-8")
    return {kind: f"{names[cls.__module__]}.{cls.__name__}" for kind, cls in roots.items()}


def check_loadable(folder: Path) -> None:
    """Read the folder's code the way transformers' remote-code loader does: every relative import must name a
    file of the folder, and no import may need a package beyond the standard library, torch and transformers
    (attnlab least of all)."""
    from transformers.dynamic_module_utils import get_imports, get_relative_imports

    files = sorted(folder.glob("*.py"))
    stems = {f.stem for f in files}
    for file in files:
        missing = sorted(set(get_relative_imports(file)) - stems)
        if missing:
            raise ExportError(f"{file.name} imports {', '.join(missing)}, which the export did not write")
        foreign = sorted(set(get_imports(file)) - ALLOWED)
        if foreign:
            raise ExportError(f"{file.name} imports {', '.join(foreign)}, which exported code must not need")
