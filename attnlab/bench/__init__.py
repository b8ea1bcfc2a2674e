"""Speed and memory of attnlab models: ``attnlab bench`` (quality comparisons are ``attnlab.compare``).

Modules, one job each: ``timing`` (warm-up, repeats, median/IQR, device sync), ``memory`` (peak live tensor
bytes on CPU and CUDA), ``flops`` (model FLOPs and the measured GEMM peak), ``env`` (device and versions),
``specs`` (model specs, matched sizes, per-model measurement options), ``references`` (other packages'
implementations benchmarked beside ours), ``targets`` (a suite's ratio goals), ``suites`` (YAML suites),
``runner`` (the bench loop), ``report`` (table, JSON, CSV, plots), ``cli``.
"""

from .runner import BenchConfig, BenchResult, run_bench

__all__ = ["BenchConfig", "BenchResult", "run_bench"]
