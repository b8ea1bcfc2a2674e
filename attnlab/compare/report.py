"""The ``attnlab compare`` report: curves.png, report.md, report.html, results.json and results.csv."""

from __future__ import annotations

import csv
import dataclasses
import html
from pathlib import Path
from typing import Any

import yaml

from ..io import atomic_path, write_json
from ..bench.plots import pyplot
from .run import CompareResult, ModelOutcome

RESULT_FIELDS = ["label", "family", "preset", "params", "steps", "tokens", "tokens_per_step", "val_loss", "val_ppl",
                 "val_bpb", "best_val_bpb", "train_loss", "tokens_per_s", "train_minutes", "peak_mem_bytes",
                 "run_dir", "error"]
HEADERS = ["model", "params", "val loss", "val ppl", "val bits/byte", "best bits/byte", "train loss", "tok/s",
           "minutes", "peak MiB (train step)"]


def write_report(result: CompareResult) -> dict[str, Path]:
    out = result.report_dir
    out.mkdir(parents=True, exist_ok=True)
    done = [o for o in result.outcomes if o.error is None]
    paths: dict[str, Path] = {}
    if done:
        paths["plot"] = write_curves_plot({o.label: o.curve for o in done}, out / "curves.png", _subtitle(result))
    rows = [{k: getattr(o, k) for k in RESULT_FIELDS} for o in result.outcomes]
    write_json(out / "results.json", {"config": result.config.to_dict(), "env": result.env, "results": rows,
                                      "samples": {o.label: o.sample for o in done}})
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS + list(result.env))
        writer.writeheader()
        writer.writerows({**row, **result.env} for row in rows)
    (out / "report.md").write_text(markdown(result, "plot" in paths))
    (out / "report.html").write_text(html_report(result, "plot" in paths))
    return {**paths, "json": out / "results.json", "csv": out / "results.csv", "markdown": out / "report.md",
            "html": out / "report.html"}


def _subtitle(result: CompareResult) -> str:
    t, env = result.config.train, result.env
    return (f"data {t.get('data', 'shakespeare')}, tokenizer {t.get('tokenizer', 'byte')}, seed {t.get('seed', 1337)}; "
            f"{env['device_name']}, torch {env['torch']}")


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _cells(o: ModelOutcome) -> list[str]:
    mem = None if o.peak_mem_bytes is None else o.peak_mem_bytes / 2**20
    return [o.label, _fmt(o.params and o.params / 1e6, ".2f") + ("M" if o.params else ""), _fmt(o.val_loss, ".4f"),
            _fmt(o.val_ppl, ".2f"), _fmt(o.val_bpb, ".4f"), _fmt(o.best_val_bpb, ".4f"), _fmt(o.train_loss, ".4f"),
            _fmt(o.tokens_per_s, ",.0f"), _fmt(o.train_minutes, ".1f"), _fmt(mem, ".1f")]


def _setup_lines(result: CompareResult) -> list[str]:
    done = [o for o in result.outcomes if o.error is None]
    env = result.env
    budget = ""
    if done:
        o = done[0]
        budget = f"{o.tokens:,} training tokens per model ({o.steps} steps × {o.tokens_per_step:,} tokens)"
    return [
        f"Every model: the same data, tokenizer, seed, schedule and token budget — {budget}.",
        f"Environment: {env['device_name']} ({env['device']}), {env['threads']} threads, torch {env['torch']}, "
        f"transformers {env['transformers']}, attnlab commit {env['git_commit'] or 'unknown'}, {env['timestamp']}.",
    ]


def _sample_cell(text: str) -> str:
    """A sample inside one Markdown table cell: escaped, newlines as <br>."""
    return html.escape(text).replace("|", "&#124;").replace("\n", "<br>") or "(empty)"


def markdown(result: CompareResult, with_plot: bool) -> str:
    cfg = result.config
    done = [o for o in result.outcomes if o.error is None]
    lines = [f"# attnlab compare: {cfg.name}", ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    lines += _setup_lines(result) + [""]
    if with_plot:
        lines += ["![validation loss and bits per byte](curves.png)", ""]
    lines += [f"| {' | '.join(HEADERS)} |", "|---|" + "---:|" * (len(HEADERS) - 1)]
    lines += [f"| {' | '.join(_cells(o))} |" for o in done]
    lines += ["", "Metrics are the last validation; tok/s is the median logged training throughput; peak memory is "
              "one training micro-step measured as `attnlab bench` does.", ""]
    failed = [o for o in result.outcomes if o.error is not None]
    if failed:
        lines += ["## Not run", ""] + [f"- `{o.label}`: {o.error}" for o in failed] + [""]
    if any(o.sample for o in done):
        prompt = cfg.train.get("sample_prompt", "\n")
        lines += ["## Samples", "", f"Prompt {prompt!r}, seed {cfg.train.get('seed', 1337)}, top-k 50, "
                  "temperature 0.8.", ""]
        lines += [f"| {' | '.join(o.label for o in done)} |", "|" + "---|" * len(done)]
        lines += [f"| {' | '.join(_sample_cell(o.sample) for o in done)} |", ""]
    lines += ["## Settings", "", "```yaml", yaml.safe_dump({"command": "compare", **_plain(cfg)}, sort_keys=False).strip(),
              "```", "", f"Runs: `{result.report_dir}/runs/`. Re-running the same command reuses finished runs.", ""]
    return "\n".join(lines)


def _plain(cfg) -> dict[str, Any]:
    values = dataclasses.asdict(cfg)
    values.pop("progress", None)
    return values


def html_report(result: CompareResult, with_plot: bool) -> str:
    done = [o for o in result.outcomes if o.error is None]
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(o)) + "</tr>" for o in done)
    samples = "".join(f"<div class='s'><h3>{esc(o.label)}</h3><pre>{esc(o.sample)}</pre></div>" for o in done)
    failed = "".join(f"<li><code>{esc(o.label)}</code>: {esc(o.error)}</li>" for o in result.outcomes if o.error)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>attnlab compare: {esc(result.config.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
.row{{display:flex;gap:1em}}.s{{flex:1;min-width:0}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:8px}}</style>
</head><body><h1>attnlab compare: {esc(result.config.name)}</h1>
{''.join(f'<p>{esc(line)}</p>' for line in _setup_lines(result))}
{'<img src="curves.png" style="max-width:100%">' if with_plot else ''}
<table><tr>{head}</tr>{body}</table>{f'<h2>Not run</h2><ul>{failed}</ul>' if failed else ''}
<h2>Samples</h2><div class="row">{samples}</div></body></html>
"""


def write_curves_plot(curves: dict[str, dict[str, list]], path: Path, subtitle: str) -> Path:
    """Validation loss and bits per byte against tokens seen, one line per model (``attnlab compare``)."""
    plt = pyplot()
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, curve) in enumerate(curves.items()):
        color = f"C{i % 10}"
        if curve["train_tokens"]:
            ax_loss.plot(curve["train_tokens"], curve["train_loss"], color=color, alpha=0.25, linewidth=1)
        ax_loss.plot(curve["val_tokens"], curve["val_loss"], "o-", color=color, label=f"{label} (val)", markersize=3)
        ax_bpb.plot(curve["val_tokens"], curve["val_bpb"], "o-", color=color, label=label, markersize=3)
    ax_loss.set_ylabel("loss (nats/token); faint: training")
    ax_bpb.set_ylabel("validation bits per byte")
    for ax in (ax_loss, ax_bpb):
        ax.set_xlabel("training tokens")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
