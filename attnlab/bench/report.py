"""``attnlab bench`` output: a rich table in the terminal and ``results.json``/``.csv``/``.md`` + PNGs.

Every row of the JSON ``results`` list and of the CSV has the fields of ``ROW_FIELDS``. A suite's targets
follow the results: a second table, the JSON ``targets`` list and a "Targets" section of results.md.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..io import atomic_path, write_json
from .plots import write_bench_plots
from .runner import BenchResult
from .specs import KIND_NAMES

IDENTITY_FIELDS = ["model", "family", "preset", "match", "implementation", "params", "d_model", "n_layers", "n_heads"]
MEASURE_FIELDS = [
    "kind", "seq_len", "batch_size", "dtype", "activation_checkpointing", "time_median_s", "time_q1_s", "time_q3_s", "time_min_s", "time_max_s",
    "repeats", "tokens_per_s", "flops", "achieved_flops_per_s", "mfu", "peak_mem_bytes", "cache_bytes", "status",
]
ENV_FIELDS = ["device", "device_name", "cpu", "threads", "torch", "transformers", "attnlab", "python", "git_commit",
              "timestamp"]
ROW_FIELDS = IDENTITY_FIELDS + MEASURE_FIELDS + ENV_FIELDS
TARGET_HEADERS = ["target", "value", "over", "ratio", "wanted", "result"]
TARGET_STYLES = {"met": "green", "missed": "red", "not measured": "yellow"}


def write_bench(result: BenchResult, out_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write results.json, results.csv, results.md and the plots; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", result.to_dict())
    with atomic_path(out_dir / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.rows)
    (out_dir / "results.md").write_text(markdown_table(result) + "\n")
    images = write_bench_plots(result.rows, out_dir, environment_line(result)) if plots else []
    return {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "markdown": out_dir / "results.md",
            "plots": images}


def environment_line(result: BenchResult) -> str:
    env, cfg = result.env, result.config
    commit = (env["git_commit"] or "no git")[:12] + ("-dirty" if str(env["git_commit"]).endswith("-dirty") else "")
    batches = _batch_sizes(result)
    batch = f"batch {batches[0]}" if len(batches) == 1 else "batch per row"
    return (f"{env['device_name']} ({env['device']}), {env['threads']} threads, {cfg.dtype}, {batch}; "
            f"torch {env['torch']}, transformers {env['transformers']}, attnlab {commit}")


def _batch_sizes(result: BenchResult) -> list[int]:
    """The batch sizes of the rows (models may set their own); the run's when there are no rows."""
    return sorted({row["batch_size"] for row in result.rows}) or [result.config.batch_size]


def _cells(row: dict[str, Any]) -> list[str]:
    ok = row["status"] == "ok"
    ms = row.get("time_median_s")
    iqr = f"{1e3 * row['time_q1_s']:.2f}–{1e3 * row['time_q3_s']:.2f}" if ok else ""
    mem, cache = row.get("peak_mem_bytes"), row.get("cache_bytes")
    return [
        row["model"], f"{row['params'] / 1e6:.2f}M", KIND_NAMES[row["kind"]], str(row["seq_len"]),
        str(row["batch_size"]), row.get("activation_checkpointing", "none"), f"{1e3 * ms:.2f}" if ok else "", iqr, f"{row['tokens_per_s']:,.0f}" if ok else "",
        f"{row['flops'] / 1e9:.2f}" if ok and row.get("flops") else "",
        f"{100 * row['mfu']:.1f}%" if ok and row.get("mfu") is not None else "",
        f"{mem / 2**20:.1f}" if ok and mem is not None else "",
        f"{cache / 2**20:.2f}" if ok and cache is not None else "",
        "ok" if ok else row["status"],
    ]


HEADERS = ["model", "params", "measure", "len", "batch", "checkpointing", "median ms", "IQR ms", "tok/s", "GFLOP", "MFU", "peak MiB",
           "cache MiB", "status"]
LEGEND = ("train: forward+backward+AdamW step, len = sequence length; prefill: forward filling the cache; "
          "decode: per-token latency with the cache after len tokens of context; recompute: per token without a "
          "cache (the whole context again). tok/s counts batch × len tokens for train/prefill, batch per decode "
          "step. IQR: interquartile range of the repetitions. cache MiB: what the cache holds after the context "
          "and the decoded tokens. checkpointing: blocks recomputed in the training step's backward (full: all, "
          "selective: every other).")


def _columns(result: BenchResult) -> list[int]:
    """Indices of the columns to show: status only when something failed, cache only when decoding ran,
    batch only when models ran with different batches, checkpointing only when some model used it."""
    shown = {"status": any(row["status"] != "ok" for row in result.rows),
             "cache MiB": any(row.get("cache_bytes") is not None for row in result.rows),
             "batch": len(_batch_sizes(result)) > 1,
             "checkpointing": any(row.get("activation_checkpointing", "none") != "none" for row in result.rows)}
    return [i for i, h in enumerate(HEADERS) if shown.get(h, True)]


def print_table(result: BenchResult, console: Console) -> None:
    table = Table(title=f"attnlab bench: {result.config.name}", caption=environment_line(result), show_lines=False)
    columns = _columns(result)
    for i in columns:
        table.add_column(HEADERS[i], justify="left" if HEADERS[i] in ("model", "measure", "status") else "right",
                         no_wrap=HEADERS[i] != "status")
    previous = None
    for row in result.rows:
        if previous is not None and row["model"] != previous:
            table.add_section()
        previous = row["model"]
        cells = _cells(row)
        table.add_row(*(cells[i] for i in columns))
    console.print(table)
    console.print(LEGEND, style="dim")
    console.print(_peak_line(result))
    for s in result.skipped:
        console.print(f"[yellow]skipped {s['model']}: {s['reason']}[/]")
    if result.targets:
        print_targets(result.targets, console)


def _target_cells(target: dict[str, Any]) -> list[str]:
    """target, value row, over row, ratio, wanted bounds, result (with why, when not measured)."""
    ratio = f"{target['ratio']:.3g}" if target["ratio"] is not None else ""
    what = target["status"] + (f" ({target['reason']})" if target["reason"] else "")
    metric = "" if target["metric"] == "time" else f" [{target['metric']}]"
    metric += " (paired)" if target.get("paired") else ""
    return [target["name"] + metric, target["value_row"], target["over_row"], ratio, target["wanted"], what]


def print_targets(targets: list[dict[str, Any]], console: Console) -> None:
    """The targets as a small table: each ratio, its bounds and met / missed / not measured."""
    table = Table(title="targets (value / over)")
    for head in TARGET_HEADERS:
        table.add_column(head, justify="right" if head == "ratio" else "left", no_wrap=head != "result")
    for target in targets:
        cells = [Text(cell) for cell in _target_cells(target)]  # Text: brackets in names are not markup
        cells[-1].stylize(TARGET_STYLES[target["status"]])
        table.add_row(*cells)
    console.print(table)


def targets_markdown(targets: list[dict[str, Any]]) -> str:
    """The "Targets" section of results.md."""
    lines = ["## Targets", "", f"| {' | '.join(TARGET_HEADERS)} |", "|---|---|---|---:|---|---|"]
    lines += [f"| {' | '.join(_target_cells(t))} |" for t in targets]
    return "\n".join(lines + ["", "ratio = value / over of the median time (or the metric in brackets); (paired): "
                               "both rows timed again in alternation, median of the rounds' medians."])


def _peak_line(result: BenchResult) -> str:
    peaks = ", ".join(f"{k} {v['flops_per_s'] / 1e9:,.1f} GFLOP/s" for k, v in result.peak_flops.items())
    size = next(iter(result.peak_flops.values()))["gemm_size"]
    return f"measured peak ({size}×{size} GEMM, median): {peaks}; MFU is against the {result.config.dtype} peak"


def markdown_table(result: BenchResult) -> str:
    columns = _columns(result)
    heads = [HEADERS[i] for i in columns]
    lines = [f"| {' | '.join(heads)} |", "|" + "|".join("---" if h in ("model", "measure", "status") else "---:"
                                                       for h in heads) + "|"]
    for row in result.rows:
        cells = _cells(row)
        lines.append(f"| {' | '.join(cells[i] for i in columns)} |")
    lines += ["", LEGEND, "", environment_line(result) + ".", _peak_line(result) + "."]
    lines += [f"Skipped {s['model']}: {s['reason']}." for s in result.skipped]
    if result.targets:
        lines += ["", targets_markdown(result.targets)]
    return "\n".join(lines)
