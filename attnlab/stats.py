"""Means with confidence intervals over seeds, and claim verdicts decided by them.

A result over a few seeds is reported as mean ± the half-width of its 95 % Student-t interval, and a claim
"A is better than B" is judged by the Welch interval of mean(A) - mean(B): it *holds* when the whole interval
favours A, *does not hold* when the whole interval favours B, and is *inconclusive* otherwise (including with
fewer than two seeds per side). The t quantile is computed here (no scipy dependency): the t density is
integrated with Simpson's rule and inverted by bisection, accurate to ~1e-9, tested against scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


def _t_density(x: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf(x: float, df: float) -> float:
    """P(T <= x) for x >= 0, by Simpson's rule on the substitution x = tan(θ), whose integrand is smooth."""
    if x < 0:
        return 1.0 - _t_cdf(-x, df)
    top = math.atan(x)
    n = 2000  # even; the integrand on [0, atan x] is bounded and smooth, so this is far below 1e-9 error
    h = top / n
    f = lambda th: _t_density(math.tan(th), df) / math.cos(th) ** 2  # noqa: E731
    s = f(0.0) + f(top) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


@lru_cache(maxsize=4096)  # a report asks for the same few (p, df) hundreds of times; each costs ~0.1 s
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (df may be fractional, as Welch's is)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class MeanCI:
    """A mean and the half-width of its confidence interval (``inf`` with one value, 0 with identical ones)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95": self.half_width if math.isfinite(self.half_width) else None, "n": self.n}


def _mean_var(values: Sequence[float]) -> tuple[float, float, int]:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no values to summarise")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"non-finite values: {xs}")
    n = len(xs)
    mean = sum(xs) / n
    var = sum((v - mean) ** 2 for v in xs) / (n - 1) if n > 1 else math.inf
    return mean, var, n


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and Student-t interval half-width of independent values (one per seed)."""
    mean, var, n = _mean_var(values)
    if n < 2:
        return MeanCI(mean, math.inf, n)
    return MeanCI(mean, t_quantile(0.5 + confidence / 2, n - 1) * math.sqrt(var / n), n)


def difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Welch interval of mean(a) - mean(b): unequal variances, Welch–Satterthwaite degrees of freedom."""
    mean_a, var_a, n_a = _mean_var(a)
    mean_b, var_b, n_b = _mean_var(b)
    diff = mean_a - mean_b
    if n_a < 2 or n_b < 2:
        return MeanCI(diff, math.inf, min(n_a, n_b))
    se2 = var_a / n_a + var_b / n_b
    if se2 == 0.0:
        return MeanCI(diff, 0.0, min(n_a, n_b))
    df = se2**2 / ((var_a / n_a) ** 2 / (n_a - 1) + (var_b / n_b) ** 2 / (n_b - 1))
    return MeanCI(diff, t_quantile(0.5 + confidence / 2, df) * math.sqrt(se2), min(n_a, n_b))


def verdict(better: Sequence[float], worse: Sequence[float], *, higher_is_better: bool,
            confidence: float = 0.95) -> str:
    """Judge the claim "``better`` beats ``worse``" on a metric from per-seed values of each side."""
    diff = difference_ci(better, worse, confidence)
    if not math.isfinite(diff.half_width):
        return INCONCLUSIVE
    low, high = (diff.low, diff.high) if higher_is_better else (-diff.high, -diff.low)
    if low > 0:
        return HOLDS
    if high < 0:
        return DOES_NOT_HOLD
    return INCONCLUSIVE
