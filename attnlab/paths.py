"""Where attnlab keeps downloaded corpora and tokenized caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache dir: ``$ATTNLAB_CACHE``, else ``$XDG_CACHE_HOME/attnlab``, else ``~/.cache/attnlab``."""
    if env := os.environ.get("ATTNLAB_CACHE"):
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnlab"
    root.mkdir(parents=True, exist_ok=True)
    return root
