"""Keep freed memory in the process on Linux/glibc, so CPU training does not page-fault every step.

glibc serves large blocks (over a threshold that tops out at 32 MiB) with a fresh ``mmap`` and hands them
back on ``free``. A training step allocates and frees the same activations, scores and logits every time,
so on the CPU each step page-faults (and the kernel zeroes) all of that memory again: on this project's
2-core machine a quarter of a DAT benchmark's CPU time was system time. PyTorch's CPU tuning guide
suggests preloading jemalloc or tcmalloc for this; ``keep_freed_memory`` gets the same effect from glibc
itself, from inside the running process: no ``mmap`` for heap blocks, no trimming of the heap's top, so
freed blocks are reused instead of faulted in again. The price is that the resident size stays at its
peak, which a training or benchmark process reaches every step anyway.

The ``attnlab`` command line calls it at start-up; ``ATTNLAB_MALLOC=default`` leaves glibc as it is.
Library users decide for themselves (``attnlab.cpu_memory.keep_freed_memory()``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt's int accepts: free memory at the heap's top stays


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory instead of returning it; True when it took effect.

    Does nothing (False) off Linux, on another C library, or when ``ATTNLAB_MALLOC=default``.
    """
    if os.environ.get("ATTNLAB_MALLOC", "keep") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
