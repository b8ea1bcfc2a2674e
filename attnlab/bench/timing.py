"""Wall-clock timing that is fair across devices: warm-up, several repetitions, device synchronisation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed repetition, summarised by the median and its spread (IQR, min, max)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return _quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.samples, 0.75)

    def scaled(self, factor: float) -> "Timing":
        """The same measurement per unit (e.g. per generated token)."""
        return Timing(tuple(s * factor for s in self.samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "time_median_s": self.median,
            "time_q1_s": self.q1,
            "time_q3_s": self.q3,
            "time_min_s": min(self.samples),
            "time_max_s": max(self.samples),
            "repeats": len(self.samples),
        }


def _quantile(values: tuple[float, ...], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), defined for a single sample too."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_fn(
    fn: Callable[[Any], None],
    *,
    device: torch.device,
    warmup: int = 1,
    repeats: int = 5,
    setup: Callable[[], Any] | None = None,
) -> Timing:
    """Time ``fn(setup())`` ``repeats`` times after ``warmup`` untimed calls; ``setup`` is never timed.

    The device is synchronised before starting and before stopping the clock, so asynchronous CUDA kernels
    are counted in full.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    samples = []
    for i in range(warmup + repeats):
        state = setup() if setup is not None else None
        synchronize(device)
        start = time.perf_counter()
        fn(state)
        synchronize(device)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            samples.append(elapsed)
    return Timing(tuple(samples))
