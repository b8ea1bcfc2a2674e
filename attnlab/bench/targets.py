"""Targets: ratios of two measured rows that a suite states a bound for (its numeric goals, e.g. ours ≥ 1.5×
a reference implementation).

A target is a mapping in a suite's ``targets:`` list::

    - name: "LEAP global: train time N=16384 / N=1024"
      value: leap-global train 16384      # "LABEL KIND SEQ": that row's median time
      over: leap-global train 1024
      max: 20                             # and/or min
      metric: time                        # time (median seconds, default), memory (peak bytes), cache (bytes)

After the run each target is "met", "missed" or "not measured" (a row missing, or its status not ok).
KIND is a row kind or its name in the tables (``specs.KIND_NAMES``: decode = decode_cache, recompute =
decode_nocache). LABEL may contain spaces: the last two words are KIND and SEQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .specs import KIND_NAMES

METRICS = {"time": "time_median_s", "memory": "peak_mem_bytes", "cache": "cache_bytes"}
TARGET_KEYS = ("name", "value", "over", "min", "max", "metric", "paired")
KINDS = {**{kind: kind for kind in KIND_NAMES}, **{name: kind for kind, name in KIND_NAMES.items()}}


@dataclass(frozen=True)
class RowRef:
    """One measured row: a model label, a row kind and a length."""

    label: str
    kind: str
    seq_len: int

    def __str__(self) -> str:
        return f"{self.label} {KIND_NAMES[self.kind]} {self.seq_len}"


@dataclass(frozen=True)
class Target:
    """``value`` / ``over`` of ``metric`` must lie within [min, max] (either bound may be absent)."""

    name: str
    value: RowRef
    over: RowRef
    metric: str = "time"
    min: float | None = None
    max: float | None = None
    paired: bool = False  # time the two rows again, alternating, so slow drift of a shared host hits both

    @property
    def wanted(self) -> str:
        """The bounds as text, e.g. "≤ 20" or "0.9 – 1.1"."""
        if self.min is not None and self.max is not None:
            return f"{self.min:g} – {self.max:g}"
        return f"≥ {self.min:g}" if self.min is not None else f"≤ {self.max:g}"

    def holds(self, ratio: float) -> bool:
        return (self.min is None or ratio >= self.min) and (self.max is None or ratio <= self.max)


def parse_targets(items: Any) -> list[Target]:
    """Targets from a suite's ``targets:`` list; a one-line ConfigError for the first bad one."""
    if not isinstance(items, list):
        raise ConfigError(f"targets must be a list of mappings, got {type(items).__name__}")
    return [parse_target(item, i) for i, item in enumerate(items)]


def parse_target(item: Any, index: int = 0) -> Target:
    where = f"target {index + 1}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a mapping with name, value, over and min and/or max, got {item!r}")
    where = f"target {item.get('name') or index + 1!r}"
    unknown = sorted(set(item) - set(TARGET_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TARGET_KEYS)}")
    missing = [key for key in ("name", "value", "over") if not item.get(key)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    if item.get("min") is None and item.get("max") is None:
        raise ConfigError(f"{where}: needs min and/or max")
    bounds = {}
    for key in ("min", "max"):
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        bounds[key] = None if value is None else float(value)
    metric = item.get("metric", "time")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric must be one of {tuple(METRICS)}, got {metric!r}")
    paired = item.get("paired", False)
    if not isinstance(paired, bool):
        raise ConfigError(f"{where}: paired must be true or false, got {paired!r}")
    if paired and metric != "time":
        raise ConfigError(f"{where}: paired needs metric 'time' (it re-times rows)")
    return Target(str(item["name"]), parse_row_ref(item["value"], where), parse_row_ref(item["over"], where),
                  metric, **bounds, paired=paired)


def parse_row_ref(text: Any, where: str = "target") -> RowRef:
    """``"LABEL KIND SEQ"`` (e.g. ``"leap-global train 16384"``)."""
    parts = str(text).rsplit(maxsplit=2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ConfigError(f"{where}: {text!r} must be 'LABEL KIND SEQ', e.g. 'gpt:tiny train 1024'")
    label, kind, seq = parts
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r} in {text!r}; choose one of {sorted(KINDS)}")
    return RowRef(label, KINDS[kind], int(seq))


def check_target_labels(targets: list[Target], labels: list[str]) -> None:
    """Before the run: every target must name models of this run (else it could never be measured)."""
    known = set(labels)
    for target in targets:
        for ref in (target.value, target.over):
            if ref.label not in known:
                raise ConfigError(f"target {target.name!r}: no model labelled {ref.label!r} in this run "
                                  f"(labels: {', '.join(labels)}); fix the target or pass --no-targets")


def evaluate_targets(
    targets: list[Target], rows: list[dict[str, Any]], paired: dict[RowRef, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Each target's ratio and status ("met", "missed", "not measured") from the run's rows.

    ``paired`` holds the rows re-timed in alternation for paired targets (see ``runner.measure_paired``);
    a paired target reads its two times from there.
    """
    index = {(r["model"], r["kind"], r["seq_len"]): r for r in rows}
    paired_index = {(ref.label, ref.kind, ref.seq_len): row for ref, row in (paired or {}).items()}
    return [_evaluate(target, paired_index if target.paired and paired_index else index) for target in targets]


def _evaluate(target: Target, index: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    field = METRICS[target.metric]
    out: dict[str, Any] = {"name": target.name, "value_row": str(target.value), "over_row": str(target.over),
                           "metric": target.metric, "min": target.min, "max": target.max, "wanted": target.wanted,
                           "paired": target.paired, "value": None, "over": None, "ratio": None}
    not_run, failed = [], []
    for key, ref in (("value", target.value), ("over", target.over)):
        row = index.get((ref.label, ref.kind, ref.seq_len))
        if row is None:
            not_run.append(str(ref))
        elif row["status"] != "ok" or not row.get(field):
            failed.append(f"{ref}: {row['status'] if row['status'] != 'ok' else f'no {field}'}")
        else:
            out[key] = row[field]
    if not_run or failed:
        reason = "; ".join(([f"not run: {', '.join(not_run)}"] if not_run else []) + failed)
        return {**out, "status": "not measured", "reason": reason}
    out["ratio"] = out["value"] / out["over"]
    return {**out, "status": "met" if target.holds(out["ratio"]) else "missed", "reason": ""}
