"""Which precision a run computes in: what ``--dtype auto`` (the default) resolves to, and why.

bf16 autocast where the device computes bf16 natively and the family is tested stable under it; fp32
otherwise. On a CPU with AVX-512 BF16 or AMX a GPT training step under bf16 autocast is 1.7× faster than
fp32 (measured on a 2-core AMD EPYC); without those instructions bf16 is emulated and slower than fp32. On
CUDA, ``torch.cuda.is_bf16_supported()`` decides (Ampere and newer).

``BF16_FAMILIES`` is the set that ``tests/test_precision.py`` trains under bf16 autocast beside fp32 (finite
losses, within 2 % of fp32's after the same steps); a family outside it (a new one, or one registered by a
user) gets fp32 until it is tested. LEAP's scan runs in fp32 inside autocast anyway, and LSW's block
attention and MoA's metric scores keep their statistics in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError

REQUESTS = ("auto", "float32", "bfloat16")
BF16_FAMILIES = frozenset({"gpt", "dat", "leap", "lsw", "moa"})
_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), and how that was found out."""
    probes = {"avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None)}
    if all(probe is not None for probe in probes.values()):
        found = [name for name, probe in probes.items() if probe()]
        return bool(found), ", ".join(found) if found else "no avx512_bf16 or amx_bf16"
    flags = _cpuinfo_flags()
    found = [flag for flag in _CPU_FLAGS if flag in flags]
    return bool(found), ", ".join(found) if found else "no avx512_bf16 or amx_bf16 in /proc/cpuinfo"


def _cpuinfo_flags() -> set[str]:
    """The CPU flags Linux reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def device_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, with the evidence."""
    device = torch.device(device)
    if device.type == "cpu":
        native, why = cpu_bf16()
        return native, f"CPU: {why}"
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return native, "CUDA: bf16 supported" if native else "CUDA: no native bf16 (before Ampere)"
    return False, f"{device.type}: bf16 autocast not tested here"


def resolve_dtype(requested: str, family: str, device: torch.device | str) -> tuple[torch.dtype | None, str]:
    """(autocast dtype, reason): ``torch.bfloat16`` to train under bf16 autocast, None for plain fp32.

    ``requested`` is ``auto`` (bf16 where the device computes it natively and ``family`` is in
    ``BF16_FAMILIES``), ``float32`` or ``bfloat16`` (taken as asked; the reason says when bf16 is emulated).
    """
    if requested not in REQUESTS:
        raise ConfigError(f"dtype must be one of {REQUESTS}, got {requested!r}")
    native, evidence = device_bf16(device)
    if requested == "float32":
        return None, "fp32: asked for"
    if requested == "bfloat16":
        note = "" if native else f" (emulated, likely slower than fp32: {evidence})"
        return torch.bfloat16, f"bf16 autocast: asked for{note}"
    if not native:
        return None, f"fp32: {evidence}"
    if family not in BF16_FAMILIES:
        return None, f"fp32: family {family!r} is not tested under bf16 autocast ({evidence})"
    return torch.bfloat16, f"bf16 autocast: {evidence}, and {family} is tested stable under it"


def dtype_name(dtype: torch.dtype | None) -> str:
    """The name ``attnlab.evaluation.autocast_context`` takes for a resolved dtype."""
    return "bfloat16" if dtype == torch.bfloat16 else "float32"
