"""What an experiment is, for the ``attnlab experiment`` runner.

An experiment compares a few *arms* (model configurations, e.g. "Transformer" and "DAT(1,1)") over a grid of
settings (task, training-set size, module...) and seeds. It plans every single training run as a ``RunSpec``,
trains one of them at a time in ``run`` (the runner skips runs whose result is already on disk, so an
interrupted experiment resumes), and states its ``Claim``s, which the runner judges from the per-seed final
metrics with ``attnlab.stats.verdict``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError

SCALES = ("laptop", "paper")


@dataclass(frozen=True)
class RunSpec:
    """One training run: an arm, a seed, and the grid point (``params``, JSON-able, e.g. task and size)."""

    arm: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A stable, filesystem-safe name for this run (its folder under ``runs/``)."""
        point = "_".join(f"{k}-{v}" for k, v in sorted(self.params.items()))
        raw = f"{self.arm}__{point}__seed-{self.seed}" if point else f"{self.arm}__seed-{self.seed}"
        return "".join(c if c.isalnum() or c in "-_.," else "-" for c in raw)

    def as_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "seed": self.seed, "params": dict(self.params)}


@dataclass(frozen=True)
class RunResult:
    """What one run measured: final metrics, and learning curves as ``{metric: [[x, value], ...]}``."""

    final: dict[str, float]
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"final": self.final, "curves": self.curves, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(final=dict(d["final"]), curves=dict(d.get("curves", {})), seconds=float(d.get("seconds", 0.0)))


@dataclass(frozen=True)
class Claim:
    """A published claim "``better`` beats ``worse`` on ``metric``", at the grid point(s) matching ``where``."""

    text: str
    better: str
    worse: str
    metric: str
    higher_is_better: bool
    where: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the claim is made, with the published number(s)


Progress = Callable[[float], None]  # called with the fraction of the current run done, 0..1


class Experiment(ABC):
    """Base class of the experiments the runner knows (see ``attnlab.experiments.registry``)."""

    name: str
    description: str
    metrics: dict[str, bool]  # metric name -> higher is better; the report tabulates these
    scales: tuple[str, ...] = SCALES  # the scales ``plan`` accepts (an experiment may add e.g. "smoke")
    x_param: str | None = None  # a numeric grid parameter the report plots final metrics against (e.g. "size")
    x_label: str | None = None  # that axis's label in the plots (default: x_param)
    device: str = "auto"  # where ``run`` trains: "auto" (a GPU when there is one), "cpu", "cuda"...; the CLI sets it
    settings: ClassVar[dict[str, Any]] = {}  # per scale, what the experiment trains with (read through ``scale_settings``)

    def check_scale(self, scale: str) -> None:
        """A ``ConfigError`` naming the experiment's scales when ``scale`` is not one of them."""
        if scale not in self.scales:
            raise ConfigError(f"{self.name} has no scale {scale!r}; choose one of {', '.join(self.scales)}")

    def scale_settings(self, scale: str) -> Any:
        """This experiment's ``settings`` at ``scale``, once ``scale`` is checked."""
        self.check_scale(scale)
        return self.settings[scale]

    def reference(self, arm: str, params: dict[str, Any], metric: str) -> float | None:
        """The published value of ``metric`` for ``arm`` at grid point ``params``, shown beside ours (None: none)."""
        return None

    @abstractmethod
    def plan(self, scale: str, seeds: int, sizes: list[int] | None = None) -> list[RunSpec]:
        """Every run of the experiment at ``scale`` with ``seeds`` seeds (``sizes`` overrides the size grid)."""

    @abstractmethod
    def claims(self, scale: str, sizes: list[int] | None = None) -> list[Claim]:
        """The claims this experiment tests at ``scale``."""

    @abstractmethod
    def configs(self, scale: str) -> dict[str, Any]:
        """The exact model and training configurations of every arm at ``scale`` (written to ``configs.json``)."""

    @abstractmethod
    def run(self, spec: RunSpec, scale: str, out_dir: Path, progress: Progress) -> RunResult:
        """Train and evaluate one run; ``out_dir`` is its own folder (for logs, never needed to resume)."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a killed run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
