"""Documents from anywhere: the built-in corpus, local files and folders, or a Hugging Face dataset.

A source is one string, as typed after ``--data``. ``iter_documents`` turns it into plain-text documents;
``source_fingerprint`` turns it into a hash that changes exactly when those documents could change, which is
what the tokenized cache is keyed on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .corpus import fetch_shakespeare, shakespeare_files

BUILTIN = "shakespeare"
HF_PREFIX = "hf:"
HF_DEFAULT_MAX_DOCS = 100_000
TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIX = ".parquet"
FILE_SUFFIXES = (*TEXT_SUFFIXES, *JSON_SUFFIXES, PARQUET_SUFFIX)


@dataclass(frozen=True)
class HubDataset:
    """A dataset that ``datasets.load_dataset`` resolves: a hub name, or anything else it understands."""

    name: str
    config: str | None


def iter_documents(
    source: str,
    *,
    text_field: str = "text",
    hf_config: str | None = None,
    hf_split: str = "train",
    streaming: bool = True,
    max_docs: int | None = None,
) -> Iterator[str]:
    """Yield the non-empty documents of ``source``, in a fixed order.

    ``source`` is ``"shakespeare"``; a ``.txt``/``.md`` file (one document); a folder (every ``*.txt`` and
    ``*.md`` below it, sorted by path, one document per file); a ``.jsonl``/``.json`` file or a ``.parquet``
    file (``text_field`` of every record); or a Hugging Face dataset, ``hf:NAME[:CONFIG]`` or a bare hub
    name such as ``roneneldan/TinyStories``. Hub datasets stop after ``max_docs`` documents, 100,000 when it
    is None, because a streamed web-scale corpus would otherwise never end; local sources are read whole.
    Problems with the source raise ``DataError`` — resolution errors at once, content errors while reading.
    """
    if max_docs is not None and max_docs < 1:
        raise ConfigError(f"max_docs must be at least 1, got {max_docs}")
    resolved = _resolve(source, hf_config)
    if isinstance(resolved, HubDataset):
        texts = _hub_texts(resolved, text_field, hf_split, streaming)
        max_docs = max_docs or HF_DEFAULT_MAX_DOCS
    elif resolved == BUILTIN:
        texts = _file_texts(shakespeare_files())
    else:
        texts = _local_texts(resolved, text_field)
    return _non_empty(texts, source, max_docs)


def source_fingerprint(
    source: str,
    *,
    text_field: str = "text",
    hf_config: str | None = None,
    hf_split: str = "train",
    max_docs: int | None = None,
) -> str:
    """A sha256 hex digest of what ``iter_documents`` would read.

    Local sources hash their file contents (plus relative paths for folders, and ``text_field`` for record
    files), so edits invalidate the cache and renames of a single file do not. A hub dataset cannot be
    hashed without downloading it, so its fingerprint is the hash of (name, config, split, text_field,
    max_docs): a dataset republished under the same name is not noticed.
    """
    resolved = _resolve(source, hf_config)
    digest = hashlib.sha256()
    if isinstance(resolved, HubDataset):
        limit = max_docs or HF_DEFAULT_MAX_DOCS
        _update(digest, "hf", resolved.name, resolved.config, hf_split, text_field, limit)
        return digest.hexdigest()
    if resolved == BUILTIN:
        _update(digest, BUILTIN, max_docs)
        _hash_files(digest, shakespeare_files(), root=fetch_shakespeare())
    elif resolved.is_dir():
        _update(digest, "folder", max_docs)
        _hash_files(digest, _folder_files(resolved), root=resolved)
    else:
        record_field = text_field if resolved.suffix.lower() not in TEXT_SUFFIXES else None
        _update(digest, "file", resolved.suffix.lower(), record_field, max_docs)
        _hash_files(digest, [resolved], root=None)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- resolution
def _resolve(source: str, hf_config: str | None) -> str | Path | HubDataset:
    """The built-in name, an existing local path, or a hub dataset; anything else is a user error."""
    if source == BUILTIN:
        return BUILTIN
    if source.startswith(HF_PREFIX):
        return _hub_dataset(source[len(HF_PREFIX) :], hf_config)
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix.lower() in FILE_SUFFIXES:
            return path
        raise DataError(f"{source}: unsupported file type; use a folder or a {', '.join(FILE_SUFFIXES)} file")
    if _looks_like_path(source):
        raise DataError(f"no such file or directory: {source}")
    return _hub_dataset(source, hf_config)


def _looks_like_path(source: str) -> bool:
    """Hub names are ``name`` or ``owner/name``; anything path-shaped that does not exist is a typo."""
    return (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
        or Path(source).suffix.lower() in FILE_SUFFIXES
    )


def _hub_dataset(spec: str, hf_config: str | None) -> HubDataset:
    name, _, config = spec.partition(":")
    if not name:
        raise ConfigError(
            "a Hugging Face source needs a name, e.g. hf:roneneldan/TinyStories or hf:wikitext:CONFIG"
        )
    if config and hf_config and config != hf_config:
        raise ConfigError(f"source {spec!r} names config {config!r} but hf_config is {hf_config!r}; give one")
    return HubDataset(name, config or hf_config)


# ------------------------------------------------------------------------------------------- reading
def _non_empty(texts: Iterable[str | None], source: str, max_docs: int | None) -> Iterator[str]:
    count = 0
    for text in texts:
        if not text:
            continue
        yield text
        count += 1
        if count == max_docs:
            return
    if count == 0:
        raise DataError(f"data source {source!r} contains no text")


def _local_texts(path: Path, text_field: str) -> Iterator[str | None]:
    suffix = path.suffix.lower()
    if path.is_dir():
        return _file_texts(_folder_files(path))
    if suffix in TEXT_SUFFIXES:
        return _file_texts([path])
    if suffix in JSON_SUFFIXES:
        return _json_texts(path, text_field)
    return _parquet_texts(path, text_field)


def _folder_files(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()]
    if not files:
        raise DataError(f"folder {folder} has no .txt or .md files")
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _file_texts(files: Iterable[Path]) -> Iterator[str]:
    """Each file's exact text: bytes decoded as UTF-8 (invalid bytes become U+FFFD), newlines untouched."""
    for path in files:
        yield path.read_bytes().decode("utf-8", errors="replace")


def _json_texts(path: Path, text_field: str) -> Iterator[str | None]:
    """JSON lines, or (for a ``.json`` file starting with ``[``) one array of records."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(1024).lstrip()
        f.seek(0)
        if path.suffix.lower() == ".json" and head.startswith("["):
            try:
                records = json.load(f)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
            for index, record in enumerate(records, 1):
                yield _record_text(record, text_field, f"{path} record {index}")
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            yield _record_text(record, text_field, f"{path}:{lineno}")


def _record_text(record: object, text_field: str, where: str) -> str | None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise DataError(f"{where}: no field {text_field!r} (fields: {fields}); pass --text-field NAME")
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    return text


def _parquet_texts(path: Path, text_field: str) -> Iterator[str | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable parquet file ({type(exc).__name__}: {exc})") from exc
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        columns = ", ".join(schema.names)
        raise DataError(f"{path} has no column {text_field!r} (columns: {columns}); pass --text-field NAME")
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{path}: column {text_field!r} holds {column_type}, not text")
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
        yield from batch.column(0).to_pylist()


def _hub_texts(dataset: HubDataset, text_field: str, split: str, streaming: bool) -> Iterator[str | None]:
    """Records of a ``datasets`` dataset; any failure to load or stream becomes one DataError line."""
    import datasets

    try:
        records = iter(datasets.load_dataset(dataset.name, dataset.config, split=split, streaming=streaming))
    except Exception as exc:  # the hub raises many types: connection, not-found, bad config or split...
        raise _hub_error(dataset.name, exc) from exc
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as exc:  # a streamed dataset can fail half-way through
            raise _hub_error(dataset.name, exc) from exc
        yield _record_text(record, text_field, f"Hugging Face dataset '{dataset.name}'")


def _hub_error(name: str, exc: Exception) -> DataError:
    lines = str(exc).strip().splitlines()
    first = lines[0][:200] if lines else ""
    return DataError(
        f"could not load Hugging Face dataset '{name}' ({type(exc).__name__}: {first}); check the name and "
        "your network, or set HF_DATASETS_OFFLINE=1 to use a local cache"
    )


# ------------------------------------------------------------------------------------------- hashing
def _update(digest: hashlib._Hash, *values: object) -> None:
    digest.update(json.dumps(values, default=str).encode() + b"\n")


def _hash_files(digest: hashlib._Hash, files: list[Path], root: Path | None) -> None:
    """Contents (and, with a ``root``, relative paths) of ``files``, length-prefixed so none can blur."""
    for path in files:
        name = path.relative_to(root).as_posix() if root is not None else ""
        _update(digest, name, path.stat().st_size)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
