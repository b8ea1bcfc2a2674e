"""The ``attnlab experiment`` driver: plan, train the missing runs one by one, then summarise.

An experiment's output folder holds:

* ``experiment.json`` — the experiment, scale, seeds, sizes, the command and a hash of ``configs(scale)``;
* ``runs/<key>/result.json`` — one finished run each, written atomically; a run killed before that file exists
  is redone, a run with one is never redone (resume);
* ``results.json``, ``configs.json``, ``report.md`` and ``plots/*.png`` — the summary, rebuilt from the run
  files alone (``summarise``; ``attnlab experiment NAME --report-only``).

Results of another configuration are never mixed in: a folder whose stored hash differs from the current
``configs(scale)`` (or whose scale or experiment differs) is refused until ``fresh=True`` clears it.
Means and 95 % intervals over seeds, and the claims' verdicts, come from ``attnlab.stats`` only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..stats import difference_ci, mean_ci, verdict
from .base import Claim, Experiment, RunResult, RunSpec, write_json_atomic

STATE = "experiment.json"
RUNS = "runs"
RESULT = "result.json"
SUMMARY_FILES = ("results.json", "configs.json", "report.md")
PLOTS = "plots"


def default_out_dir(name: str) -> Path:
    return Path("runs") / "experiments" / name


def config_hash(experiment: Experiment, scale: str) -> str:
    """A digest of the scale and every arm's exact configuration: what makes two results comparable."""
    blob = json.dumps({"scale": scale, "configs": experiment.configs(scale)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def command_line(name: str, scale: str, seeds: int, sizes: list[int] | None, out_dir: Path) -> str:
    """The one command that reproduces (or resumes) this experiment."""
    parts = ["attnlab", "experiment", name, "--scale", scale, "--seeds", str(seeds)]
    if sizes:
        parts += ["--sizes", *map(str, sizes)]
    return " ".join(parts + ["--out-dir", _display_path(out_dir)])


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_plan(experiment: Experiment, specs: list[RunSpec]) -> None:
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{experiment.name} plans two runs with the same key; its grid points must differ")
    if not specs:
        raise ConfigError(f"{experiment.name} plans no runs with these options")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None


def prepare_out_dir(experiment: Experiment, scale: str, out_dir: Path, *, fresh: bool) -> str:
    """Check (or, with ``fresh``, clear) the folder against the current configuration; returns the hash."""
    digest = config_hash(experiment, scale)
    state_path, runs = out_dir / STATE, out_dir / RUNS
    if fresh:
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(out_dir / PLOTS, ignore_errors=True)
        for name in (STATE, *SUMMARY_FILES):
            (out_dir / name).unlink(missing_ok=True)
    if state_path.exists():
        state = _read_json(state_path)
        mine = (state.get("experiment"), state.get("scale"), state.get("config_hash"))
        if mine != (experiment.name, scale, digest):
            raise ConfigError(
                f"{out_dir} holds results of another configuration ({state.get('experiment')} at scale "
                f"{state.get('scale')}, configs {state.get('config_hash')}; now {experiment.name} at {scale}, "
                f"configs {digest}): pass --fresh to start over, or another --out-dir")
    elif runs.exists() and any(runs.iterdir()):
        raise ConfigError(f"{out_dir} has runs but no {STATE} to tell their configuration: pass --fresh to start "
                          "over, or another --out-dir")
    return digest


def load_run(path: Path, spec: RunSpec) -> dict[str, Any] | None:
    """A finished run's record, or None when missing, unreadable or of another spec (then it is redone)."""
    try:
        record = json.loads(path.read_text())
        if record["spec"] != spec.as_dict():
            return None
        RunResult.from_dict(record["result"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------ running
@dataclass
class Outcome:
    """What ``run_experiment`` did: runs trained now and skipped as already finished, and where the report is."""

    trained: int
    skipped: int
    report: Path


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _point_key(spec: RunSpec) -> str:
    return json.dumps([spec.arm, spec.params], sort_keys=True)


def _describe(spec: RunSpec) -> str:
    point = " ".join(f"{k}={v}" for k, v in sorted(spec.params.items()))
    return f"{spec.arm} {point} seed={spec.seed}".replace("  ", " ")


def _eta(todo: list[RunSpec], done_seconds: dict[str, list[float]], current_fraction: float) -> float | None:
    """Seconds left: each remaining run costs what finished runs of its arm and grid point took (the mean over
    every finished run when none of its point has finished), less what the current run has done."""
    everything = [s for v in done_seconds.values() for s in v]
    if not everything:
        return None
    overall = sum(everything) / len(everything)
    costs = []
    for spec in todo:
        same = done_seconds.get(_point_key(spec))
        costs.append(sum(same) / len(same) if same else overall)
    if costs:
        costs[0] *= max(0.0, 1.0 - current_fraction)
    return sum(costs)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def run_experiment(
    experiment: Experiment,
    *,
    scale: str = "laptop",
    seeds: int = 3,
    sizes: list[int] | None = None,
    out_dir: Path | str | None = None,
    fresh: bool = False,
    console: Any = None,
    show_progress: bool = True,
    max_runs: int | None = None,
) -> Outcome:
    """Train every planned run that has no result yet (one at a time, each written atomically), then write the
    summary. ``max_runs`` stops after that many trained runs (the rest stay for a later call)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    experiment.check_scale(scale)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if sizes is not None and (not sizes or any(int(s) <= 0 for s in sizes)):
        raise ConfigError(f"--sizes must be positive integers, got {sizes}")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(experiment.name)
    specs = experiment.plan(scale, seeds, sizes)
    _check_plan(experiment, specs)
    digest = prepare_out_dir(experiment, scale, out_dir, fresh=fresh)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / STATE, {
        "experiment": experiment.name, "scale": scale, "seeds": seeds, "sizes": sizes, "config_hash": digest,
        "command": command_line(experiment.name, scale, seeds, sizes, out_dir),
        "environment": _environment(experiment.device),
    })
    write_json_atomic(out_dir / "configs.json", {"experiment": experiment.name, "scale": scale,
                                                 "config_hash": digest, **experiment.configs(scale)})

    done_seconds: dict[str, list[float]] = defaultdict(list)
    todo: list[RunSpec] = []
    for spec in specs:
        record = load_run(out_dir / RUNS / spec.key / RESULT, spec)
        if record is None:
            todo.append(spec)
        else:
            done_seconds[_point_key(spec)].append(float(record.get("wall_seconds", 0.0)))
    skipped = len(specs) - len(todo)
    console.print(f"[bold]{experiment.name}[/] at scale {scale}: {len(specs)} runs, {skipped} already finished, "
                  f"{len(todo)} to train → {out_dir}", soft_wrap=True)
    if max_runs is not None:
        todo = todo[:max_runs]
    trained = _train_all(experiment, scale, out_dir, todo, done_seconds, console, show_progress, len(specs), skipped)
    report = summarise(experiment, out_dir)
    console.print(f"report: {report}", highlight=False, soft_wrap=True)
    return Outcome(trained=trained, skipped=skipped, report=report)


def _train_all(experiment: Experiment, scale: str, out_dir: Path, todo: list[RunSpec],
               done_seconds: dict[str, list[float]], console: Any, show_progress: bool, total: int,
               skipped: int) -> int:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as bar:
        overall = bar.add_task("experiment", total=len(todo), eta="")
        current = bar.add_task("run", total=1.0, eta="")
        for i, spec in enumerate(todo):
            remaining = todo[i:]
            bar.update(current, description=_describe(spec), completed=0.0)

            def progress(fraction: float, _remaining: list[RunSpec] = remaining, _done: int = i) -> None:
                fraction = min(max(float(fraction), 0.0), 1.0)
                bar.update(current, completed=fraction)
                bar.update(overall, completed=_done + fraction,
                           eta=f"ETA {format_seconds(_eta(_remaining, done_seconds, fraction))}")

            progress(0.0)
            run_dir = out_dir / RUNS / spec.key
            run_dir.mkdir(parents=True, exist_ok=True)
            wall, cpu = time.perf_counter(), _cpu_seconds()
            result = experiment.run(spec, scale, run_dir, progress)
            wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
            result = RunResult(final=dict(result.final), curves=dict(result.curves), seconds=wall)
            write_json_atomic(run_dir / RESULT, {
                "spec": spec.as_dict(), "result": result.as_dict(), "wall_seconds": wall, "cpu_seconds": cpu,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            done_seconds[_point_key(spec)].append(wall)
            bar.update(overall, completed=i + 1)
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.final.items())
            eta = _eta(todo[i + 1:], done_seconds, 0.0) if i + 1 < len(todo) else 0.0
            console.print(f"[{skipped + i + 1}/{total}] {_describe(spec)}: {metrics} ({wall:.1f} s wall, "
                          f"{cpu:.1f} s CPU; ETA {format_seconds(eta)})", highlight=False, soft_wrap=True)
    return len(todo)


# ------------------------------------------------------------------------------------------ summarising
def _matches(params: dict[str, Any], where: dict[str, Any]) -> bool:
    """A grid point matches ``where`` when every key has that value (or one of a list of values)."""
    for key, want in where.items():
        have = params.get(key)
        if isinstance(want, (list, tuple)):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def claim_values(records: list[dict[str, Any]], claim: Claim, arm: str) -> list[float]:
    """One value per seed for ``arm``: ``claim.metric`` averaged over the grid points matching ``claim.where``
    (over a grid of training-set sizes, the normalised area under the learning curve). Only seeds that finished
    every matching point count, so both sides average the same points."""
    points = {json.dumps(r["params"], sort_keys=True) for r in records if _matches(r["params"], claim.where)}
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r["arm"] == arm and _matches(r["params"], claim.where) and claim.metric in r["final"]:
            by_seed[r["seed"]].append(float(r["final"][claim.metric]))
    return [sum(v) / len(v) for seed, v in sorted(by_seed.items()) if len(v) == len(points)]


def judge(claim: Claim, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A claim with both sides' per-seed values, their means and intervals, the Welch interval of the
    difference and the verdict (``attnlab.stats.verdict``); inconclusive when a side has under two seeds."""
    better, worse = claim_values(records, claim, claim.better), claim_values(records, claim, claim.worse)
    entry: dict[str, Any] = {
        "text": claim.text, "better": claim.better, "worse": claim.worse, "metric": claim.metric,
        "higher_is_better": claim.higher_is_better, "where": claim.where, "source": claim.source,
        "better_values": better, "worse_values": worse,
    }
    if better and worse:
        entry["better_ci"] = mean_ci(better).as_dict()
        entry["worse_ci"] = mean_ci(worse).as_dict()
        entry["difference_ci"] = difference_ci(better, worse).as_dict()
        entry["verdict"] = verdict(better, worse, higher_is_better=claim.higher_is_better)
    else:
        entry["verdict"] = "inconclusive"
    return entry


def aggregate(records: list[dict[str, Any]], experiment: Experiment) -> list[dict[str, Any]]:
    """Mean ± 95 % CI over seeds of every final metric, per arm and grid point (with the published value)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["arm"], json.dumps(r["params"], sort_keys=True))].append(r)
    rows = []
    for (arm, point), group in groups.items():
        params = json.loads(point)
        metrics = sorted({m for r in group for m in r["final"]}, key=_metric_order(experiment))
        for metric in metrics:
            values = [float(r["final"][metric]) for r in sorted(group, key=lambda r: r["seed"]) if metric in r["final"]]
            rows.append({"arm": arm, "params": params, "metric": metric, **mean_ci(values).as_dict(),
                         "values": values, "paper": experiment.reference(arm, params, metric)})
    return rows


def _metric_order(experiment: Experiment) -> Callable[[str], tuple[int, str]]:
    order = list(experiment.metrics)
    return lambda m: (order.index(m) if m in order else len(order), m)


def aggregate_curves(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± 95 % CI over seeds of every learning curve, at each x that every seed of the group recorded."""
    groups: dict[tuple[str, str, str], list[dict[float, float]]] = defaultdict(list)
    for r in records:
        for metric, points in r.get("curves", {}).items():
            key = (r["arm"], json.dumps(r["params"], sort_keys=True), metric)
            groups[key].append({float(x): float(y) for x, y in points})
    rows = []
    for (arm, point, metric), curves in groups.items():
        xs = sorted(set.intersection(*(set(c) for c in curves)))
        points = [{"x": x, **mean_ci([c[x] for c in curves]).as_dict()} for x in xs]
        rows.append({"arm": arm, "params": json.loads(point), "metric": metric, "points": points})
    return rows


def load_records(experiment: Experiment, out_dir: Path) -> tuple[dict[str, Any], list[RunSpec], list[dict[str, Any]]]:
    """The stored state, the plan it describes and the finished runs of that plan (flattened records)."""
    state_path = out_dir / STATE
    if not state_path.exists():
        raise ConfigError(f"{out_dir} has no {STATE}: run the experiment first (without --report-only)")
    state = _read_json(state_path)
    if state.get("experiment") != experiment.name:
        raise ConfigError(f"{out_dir} holds the experiment {state.get('experiment')!r}, not {experiment.name!r}")
    specs = experiment.plan(state["scale"], int(state["seeds"]), state.get("sizes"))
    records = []
    for spec in specs:
        record = load_run(out_dir / RUNS / spec.key / RESULT, spec)
        if record is not None:
            records.append({"key": spec.key, **spec.as_dict(), **record["result"],
                            "wall_seconds": record.get("wall_seconds", 0.0),
                            "cpu_seconds": record.get("cpu_seconds", 0.0)})
    return state, specs, records


def hardware_line(env: dict[str, Any]) -> str:
    """"2-core AMD EPYC, torch 2.13.0 CPU (2 threads)" — what the times were measured on."""
    cores = env.get("cores") or "?"
    device = "CPU" if str(env.get("device", "cpu")).startswith("cpu") else env.get("device_name", env.get("device"))
    threads = env.get("threads")
    return (f"{cores}-core {env.get('cpu', '?')}, torch {env.get('torch', '?')} {device} "
            f"({threads} thread{'' if threads == 1 else 's'})")


def _environment(device: str) -> dict[str, Any]:
    from ..bench.env import environment
    from .training import device_of

    env = environment(device_of(device))
    env["cores"] = os.cpu_count()
    return env


def summarise(experiment: Experiment, out_dir: Path | str) -> Path:
    """Write ``results.json``, ``report.md`` and the plots from the run files on disk (no training)."""
    out_dir = Path(out_dir)
    state, specs, records = load_records(experiment, out_dir)
    scale = state["scale"]
    claims = [judge(c, records) for c in experiment.claims(scale, state.get("sizes"))]
    env = state.get("environment") or _environment(experiment.device)
    timing = {
        "runs_planned": len(specs), "runs_finished": len(records),
        "wall_seconds": sum(r["wall_seconds"] for r in records),
        "cpu_seconds": sum(r["cpu_seconds"] for r in records),
    }
    results = {
        "experiment": experiment.name, "description": experiment.description, "scale": scale,
        "seeds": state["seeds"], "sizes": state.get("sizes"), "command": state["command"],
        "config_hash": state["config_hash"], "metrics": experiment.metrics, "environment": env,
        "hardware": hardware_line(env), "timing": timing, "claims": claims,
        "aggregate": aggregate(records, experiment), "curves": aggregate_curves(records), "runs": records,
    }
    write_json_atomic(out_dir / "results.json", results)
    if not (out_dir / "configs.json").exists():
        write_json_atomic(out_dir / "configs.json", {"experiment": experiment.name, "scale": scale,
                                                     "config_hash": state["config_hash"],
                                                     **experiment.configs(scale)})
    plots = write_plots(experiment, results, out_dir / PLOTS)
    report = out_dir / "report.md"
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text(render_report(experiment, results, plots, out_dir))
    tmp.replace(report)
    return report


# ------------------------------------------------------------------------------------------ report
def _point_label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(params.items())) or "–"


def _fmt(value: dict[str, Any] | None, digits: int = 3) -> str:
    if not value:
        return "–"
    ci = value.get("ci95")
    return f"{value['mean']:.{digits}f}" if ci is None else f"{value['mean']:.{digits}f} ± {ci:.{digits}f}"


def _sort_key(x_param: str | None) -> Callable[[dict[str, Any]], tuple]:
    def key(params: dict[str, Any]) -> tuple:
        rest = tuple((k, str(v)) for k, v in sorted(params.items()) if k != x_param)
        return rest, params.get(x_param, 0) if x_param else 0
    return key


def render_report(experiment: Experiment, results: dict[str, Any], plots: list[Path], out_dir: Path) -> str:
    """The Markdown report: how to reproduce it, where and how long it ran, the verdicts, then a table per metric."""
    timing = results["timing"]
    arms = list(dict.fromkeys(row["arm"] for row in results["aggregate"]))
    lines = [
        f"# Experiment `{experiment.name}` ({results['scale']} scale)", "",
        experiment.description, "",
        f"- Command: `{results['command']}`",
        (f"- Hardware: {results['hardware']}; attnlab {results['environment'].get('attnlab')}, commit "
         f"{results['environment'].get('git_commit') or '?'}"),
        f"- Runs: {timing['runs_finished']} of {timing['runs_planned']} finished; {results['seeds']} seeds",
        (f"- Time: {format_seconds(timing['wall_seconds'])} wall clock (sum over runs), "
         f"{format_seconds(timing['cpu_seconds'])} process CPU time (user + system, all threads); the machine may "
         "have been shared, so the CPU time is the steadier number"),
        ("- Numbers: mean ± half-width of the 95 % Student-t interval over seeds; a claim *holds* when the whole "
         "95 % Welch interval of the difference favours it, *does not hold* when it all favours the other side, "
         "and is *inconclusive* otherwise"),
        ("- Files: [results.json](results.json) (every run, every aggregate), [configs.json](configs.json) (the "
         "exact configurations)"),
        "",
        "## Claims", "",
        "| claim | metric | ours: better side | ours: other side | difference (95 % CI) | verdict | published |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["claims"]:
        named = all(str(v) in c["text"] for v in c["where"].values())
        where = f" ({_point_label(c['where'])})" if c["where"] and not named else ""
        lines.append(
            f"| {c['text']}{where} | {c['metric']} | {c['better']}: {_fmt(c.get('better_ci'))} | "
            f"{c['worse']}: {_fmt(c.get('worse_ci'))} | {_fmt(c.get('difference_ci'))} | **{c['verdict']}** | "
            f"{c['source'] or '–'} |")
    by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in results["aggregate"]:
        by_metric[row["metric"]].append(row)
    for metric, rows in by_metric.items():
        direction = "higher" if experiment.metrics.get(metric, True) else "lower"
        lines += ["", f"## `{metric}` ({direction} is better)", ""]
        points = sorted({json.dumps(r["params"], sort_keys=True) for r in rows},
                        key=lambda p: _sort_key(experiment.x_param)(json.loads(p)))
        cells = {(r["arm"], json.dumps(r["params"], sort_keys=True)): r for r in rows}
        lines += ["| grid point | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
        for point in points:
            row = [_point_label(json.loads(point))]
            for arm in arms:
                cell = cells.get((arm, point))
                text = _fmt(cell)
                if cell and cell.get("paper") is not None:
                    text += f" (paper {cell['paper']:.3f})"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
    if plots:
        lines += ["", "## Plots", "", "Mean over seeds with the 95 % interval as a band.", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots]
    lines += ["", "## Configurations", "",
              "Every arm's model and training configuration at this scale is in [configs.json](configs.json).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, xs: list[float], means: list[float], cis: list[float | None], label: str, color: str) -> None:
    ax.plot(xs, means, marker="o", markersize=3, label=label, color=color)
    lows = [m - (c or 0.0) for m, c in zip(means, cis)]
    highs = [m + (c or 0.0) for m, c in zip(means, cis)]
    ax.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)


def _panels(n: int):
    plt = _pyplot()
    columns = min(n, 3)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def write_plots(experiment: Experiment, results: dict[str, Any], folder: Path) -> list[Path]:
    """Final metrics against ``experiment.x_param`` (a panel per other grid point), and every learning curve
    against its x (a panel per grid point); a line per arm, the 95 % interval as a band."""
    shutil.rmtree(folder, ignore_errors=True)
    written: list[Path] = []
    arms = list(dict.fromkeys(row["arm"] for row in results["aggregate"]))
    colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    x_param = experiment.x_param
    if x_param:
        by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in results["aggregate"]:
            if x_param in row["params"]:
                by_metric[row["metric"]].append(row)
        for metric, rows in by_metric.items():
            panels = sorted({json.dumps({k: v for k, v in r["params"].items() if k != x_param}, sort_keys=True)
                             for r in rows})
            plt, fig, axes = _panels(len(panels))
            for ax, panel in zip(axes, panels):
                rest = json.loads(panel)
                for arm in arms:
                    series = sorted((r for r in rows if r["arm"] == arm and
                                     {k: v for k, v in r["params"].items() if k != x_param} == rest),
                                    key=lambda r: r["params"][x_param])
                    if series:
                        _band(ax, [r["params"][x_param] for r in series], [r["mean"] for r in series],
                              [r["ci95"] for r in series], arm, colors[arm])
                    paper = [(r["params"][x_param], r["paper"]) for r in series if r.get("paper") is not None]
                    if paper:
                        ax.plot(*zip(*paper), linestyle=":", marker="x", markersize=4, color=colors[arm],
                                label=f"{arm} (paper)")
                ax.set_title(_point_label(rest) if rest else experiment.name, fontsize=9)
                ax.set_xlabel(experiment.x_label or x_param)
                ax.set_ylabel(metric)
                ax.grid(alpha=0.3)
            axes[0].legend(fontsize=7)
            written.append(_save(plt, fig, folder / f"{metric}_vs_{x_param}.png"))
    by_curve: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in results["curves"]:
        by_curve[row["metric"]].append(row)
    for metric, rows in by_curve.items():
        panels = sorted({json.dumps(r["params"], sort_keys=True) for r in rows})
        plt, fig, axes = _panels(len(panels))
        for ax, panel in zip(axes, panels):
            for arm in arms:
                for r in rows:
                    if r["arm"] == arm and json.dumps(r["params"], sort_keys=True) == panel and r["points"]:
                        _band(ax, [p["x"] for p in r["points"]], [p["mean"] for p in r["points"]],
                              [p["ci95"] for p in r["points"]], arm, colors[arm])
            ax.set_title(_point_label(json.loads(panel)), fontsize=9)
            ax.set_xlabel(getattr(experiment, "curve_x", None) or "training step")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        written.append(_save(plt, fig, folder / f"{metric}_vs_step.png"))
    return written
