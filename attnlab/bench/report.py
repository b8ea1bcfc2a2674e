"""``attnlab bench`` output: a rich table in the terminal and ``results.json``/``.csv``/``.md`` + PNGs.

Every row of the JSON ``results`` list and of the CSV has the fields of ``ROW_FIELDS``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..io import atomic_path, write_json
from .plots import write_bench_plots
from .runner import BenchResult

IDENTITY_FIELDS = ["model", "family", "preset", "match", "params", "d_model", "n_layers", "n_heads"]
MEASURE_FIELDS = [
    "kind", "seq_len", "batch_size", "dtype", "time_median_s", "time_q1_s", "time_q3_s", "time_min_s", "time_max_s",
    "repeats", "tokens_per_s", "flops", "achieved_flops_per_s", "mfu", "peak_mem_bytes", "status",
]
ENV_FIELDS = ["device", "device_name", "cpu", "threads", "torch", "transformers", "attnlab", "python", "git_commit",
              "timestamp"]
ROW_FIELDS = IDENTITY_FIELDS + MEASURE_FIELDS + ENV_FIELDS
KIND_NAMES = {"train": "train", "prefill": "prefill", "decode_cache": "decode", "decode_nocache": "recompute"}


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
    return (f"{env['device_name']} ({env['device']}), {env['threads']} threads, {cfg.dtype}, batch {cfg.batch_size}; "
            f"torch {env['torch']}, transformers {env['transformers']}, attnlab {commit}")


def _cells(row: dict[str, Any]) -> list[str]:
    ok = row["status"] == "ok"
    ms = row.get("time_median_s")
    iqr = f"{1e3 * row['time_q1_s']:.2f}–{1e3 * row['time_q3_s']:.2f}" if ok else ""
    mem = row.get("peak_mem_bytes")
    return [
        row["model"], f"{row['params'] / 1e6:.2f}M", KIND_NAMES[row["kind"]], str(row["seq_len"]),
        f"{1e3 * ms:.2f}" if ok else "", iqr, f"{row['tokens_per_s']:,.0f}" if ok else "",
        f"{row['flops'] / 1e9:.2f}" if ok and row.get("flops") else "",
        f"{100 * row['mfu']:.1f}%" if ok and row.get("mfu") is not None else "",
        f"{mem / 2**20:.1f}" if ok and mem is not None else "",
        "ok" if ok else row["status"],
    ]


HEADERS = ["model", "params", "measure", "len", "median ms", "IQR ms", "tok/s", "GFLOP", "MFU", "peak MiB", "status"]
LEGEND = ("train: forward+backward+AdamW step, len = sequence length; prefill: forward filling the cache; "
          "decode: per-token latency with the cache after len tokens of context; recompute: per token without a "
          "cache (the whole context again). tok/s counts batch × len tokens for train/prefill, batch per decode "
          "step. IQR: interquartile range of the repetitions.")


def _columns(result: BenchResult) -> list[int]:
    """Indices of the columns to show: the status column only when something failed."""
    failed = any(row["status"] != "ok" for row in result.rows)
    return [i for i, h in enumerate(HEADERS) if h != "status" or failed]


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
    return "\n".join(lines)
