"""keep_freed_memory: large tensors come from the reused heap, not from a fresh mmap per allocation."""

import ctypes
import os
import subprocess
import sys

import pytest

from attnlab.cpu_memory import keep_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

PROBE = """
import ctypes, os, torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if os.environ.get("KEEP"):
    from attnlab.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
before = libc.mallinfo2().hblkhd
t = torch.ones(16 * 2**20)  # 64 MiB, over glibc's largest mmap threshold
print(libc.mallinfo2().hblkhd - before)
"""


def mmapped_bytes_for_a_64mib_tensor(keep: bool) -> int:
    env = {**os.environ, "KEEP": "1" if keep else ""}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_large_allocations_stop_being_mmapped():
    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    assert mmapped_bytes_for_a_64mib_tensor(keep=False) >= 64 * 2**20  # glibc's default: a fresh mmap
    assert mmapped_bytes_for_a_64mib_tensor(keep=True) == 0  # kept heap: reused, never faulted in anew


def test_opt_out(monkeypatch):
    monkeypatch.setenv("ATTNLAB_MALLOC", "default")
    assert keep_freed_memory() is False
