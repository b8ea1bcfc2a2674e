"""PNG plots with matplotlib's Agg backend (no display needed): one line per model, log-log axes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

# (file, title, kinds with line styles, y field, y label, y scale factor)
PANELS = [
    ("train_step_time.png", "training step (fwd+bwd+AdamW)", {"train": "-"}, "time_median_s", "seconds / step", 1.0),
    ("train_peak_memory.png", "training step peak memory", {"train": "-"}, "peak_mem_bytes", "MiB", 2.0**-20),
    ("prefill_time.png", "prefill (forward, fills the cache)", {"prefill": "-"}, "time_median_s", "seconds", 1.0),
    ("decode_latency.png", "decode latency: cache (solid) vs recompute (dashed)",
     {"decode_cache": "-", "decode_nocache": "--"}, "time_median_s", "seconds / token", 1.0),
]
SPREAD = {"time_median_s": ("time_q1_s", "time_q3_s")}


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _null_locator():
    from matplotlib.ticker import NullLocator

    return NullLocator()


def _series(rows: list[dict[str, Any]], kinds: dict[str, str], field: str) -> dict[tuple[str, str], list[dict]]:
    """The measured rows of a panel, by (model, kind)."""
    series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["kind"] in kinds and row.get("status") == "ok" and row.get(field) is not None:
            series[(row["model"], row["kind"])].append(row)
    return series


def _draw(ax, rows: list[dict[str, Any]], kinds: dict[str, str], field: str, ylabel: str, scale: float) -> bool:
    """One line per (model, kind), with the IQR as error bars; False when there was nothing to draw."""
    series = _series(rows, kinds, field)
    colors: dict[str, str] = {}
    for (model, kind), points in series.items():
        points.sort(key=lambda r: r["seq_len"])
        x = [r["seq_len"] for r in points]
        y = [r[field] * scale for r in points]
        color = colors.setdefault(model, f"C{len(colors) % 10}")
        label = model if len(kinds) == 1 else f"{model} ({'cache' if kind == 'decode_cache' else 'no cache'})"
        yerr = None
        if field in SPREAD:
            lo, hi = SPREAD[field]
            yerr = [[v - r[lo] * scale for v, r in zip(y, points)], [r[hi] * scale - v for v, r in zip(y, points)]]
        ax.errorbar(x, y, yerr=yerr, fmt="o" + kinds[kind], color=color, label=label, capsize=2, markersize=3)
    if not series:
        return False
    ax.set_xscale("log", base=2)
    ticks = sorted({r["seq_len"] for points in series.values() for r in points})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(_null_locator())
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)" if "decode" in next(iter(kinds)) else "sequence length (tokens)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return True


def write_bench_plots(rows: list[dict[str, Any]], out_dir: Path, subtitle: str) -> list[Path]:
    """One PNG per panel that has data, plus ``summary.png`` with all of them."""
    plt = pyplot()
    written = []
    for name, title, kinds, field, ylabel, scale in PANELS:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        if _draw(ax, rows, kinds, field, ylabel, scale):
            ax.set_title(f"{title}\n{subtitle}", fontsize=9)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=120)
            written.append(out_dir / name)
        plt.close(fig)
    present = [panel for panel in PANELS if _series(rows, panel[2], panel[3])]
    if present:  # the panels with data, two per row
        n_rows, n_cols = (len(present) + 1) // 2, min(len(present), 2)
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.5 * n_cols, 4 * n_rows), squeeze=False)
        for ax, (_, title, kinds, field, ylabel, scale) in zip(axes.flat, present):
            _draw(ax, rows, kinds, field, ylabel, scale)
            ax.set_title(title, fontsize=9)
        for ax in axes.flat[len(present):]:
            ax.set_axis_off()
        fig.suptitle(subtitle, fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "summary.png", dpi=110)
        written.append(out_dir / "summary.png")
        plt.close(fig)
    return written
