"""The ``attnlab compare`` report: curves.png, report.md, report.html, results.json and results.csv.

With one seed per model the report shows each run's numbers. With several (``seeds: N``) each model's row is
the mean ± the half-width of the 95 % Student-t interval over its seeds (``attnlab.stats.mean_ci``), every
model's bits per byte is compared with the first model's by the Welch interval of the difference
(``attnlab.stats.difference_ci`` and ``verdict``), the curves are seed means with the interval as a band, and a
second table lists every run.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..bench.plots import pyplot
from ..io import atomic_path, write_json
from ..stats import MeanCI, difference_ci, mean_ci, verdict
from .run import CompareResult, ModelOutcome

RESULT_FIELDS = ["label", "family", "preset", "params", "steps", "tokens", "tokens_per_step", "val_loss", "val_ppl",
                 "val_bpb", "best_val_bpb", "train_loss", "tokens_per_s", "train_minutes", "peak_mem_bytes",
                 "run_dir", "error"]
HEADERS = ["model", "params", "val loss", "val ppl", "val bits/byte", "best bits/byte", "train loss", "tok/s",
           "minutes", "peak MiB (train step)"]
# The table's per-run metrics that get a mean ± CI over seeds, with their number formats.
SEED_METRICS = {"val_loss": ".4f", "val_ppl": ".2f", "val_bpb": ".4f", "best_val_bpb": ".4f", "train_loss": ".4f",
                "tokens_per_s": ",.0f", "train_minutes": ".1f"}
SEED_FIELDS = RESULT_FIELDS[:1] + ["seed"] + RESULT_FIELDS[1:]


def write_report(result: CompareResult) -> dict[str, Path]:
    if len(result.seeds) > 1:
        return write_seeds_report(result)
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


def _seed_text(result: CompareResult) -> str:
    seeds = result.seeds
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"


def _subtitle(result: CompareResult) -> str:
    t, env = result.config.train, result.env
    return (f"data {t.get('data', 'shakespeare')}, tokenizer {t.get('tokenizer', 'byte')}, {_seed_text(result)}; "
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
    same = "seed" if len(result.seeds) == 1 else f"seeds ({', '.join(map(str, result.seeds))}, one run each)"
    return [
        f"Every model: the same data, tokenizer, {same}, schedule and token budget — {budget}.",
        f"Environment: {env['device_name']} ({env['device']}), {env['threads']} threads, torch {env['torch']}, "
        f"transformers {env['transformers']}, attnlab commit {env['git_commit'] or 'unknown'}, {env['timestamp']}.",
    ]


def _sample_cell(text: str) -> str:
    """A sample inside one Markdown table cell: escaped, newlines as <br>."""
    return html.escape(text).replace("|", "&#124;").replace("\n", "<br>") or "(empty)"


def _head(result: CompareResult, plot_alt: str | None) -> list[str]:
    """Title, description, the shared setup and, when there is one, the curves plot (``plot_alt``: its alt text)."""
    cfg = result.config
    lines = [f"# attnlab compare: {cfg.name}", ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    lines += _setup_lines(result) + [""]
    if plot_alt:
        lines += [f"![{plot_alt}](curves.png)", ""]
    return lines


def markdown(result: CompareResult, with_plot: bool) -> str:
    cfg = result.config
    done = [o for o in result.outcomes if o.error is None]
    lines = _head(result, "validation loss and bits per byte" if with_plot else None)
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


# ------------------------------------------------------------------------------------ several seeds
@dataclass
class ModelSummary:
    """One model over its seeds: each metric's per-seed values and their mean with its 95 % interval."""

    label: str
    family: str
    preset: str
    params: int | None
    peak_mem_bytes: int | None
    seeds: list[int]
    values: dict[str, list[float]]
    stats: dict[str, MeanCI]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "family": self.family, "preset": self.preset, "params": self.params,
                "peak_mem_bytes": self.peak_mem_bytes, "seeds": self.seeds,
                "metrics": {k: {**self.stats[k].as_dict(), "values": v} for k, v in self.values.items()}}


def summarise_models(result: CompareResult) -> list[ModelSummary]:
    """A ``ModelSummary`` per model with at least one finished run (failed seeds are left out and listed apart)."""
    summaries = []
    for label, outcomes in result.by_model().items():
        done = [o for o in outcomes if o.error is None]
        if not done:
            continue
        values = {k: [float(getattr(o, k)) for o in done if getattr(o, k) is not None] for k in SEED_METRICS}
        values = {k: v for k, v in values.items() if v}
        first = done[0]
        summaries.append(ModelSummary(label, first.family, first.preset, first.params, first.peak_mem_bytes,
                                      [o.seed for o in done], values, {k: mean_ci(v) for k, v in values.items()}))
    return summaries


def differences(summaries: list[ModelSummary], metric: str = "val_bpb") -> list[dict[str, Any]]:
    """Each model's ``metric`` against the first model's: the Welch 95 % interval of (model − first) and whether
    the model is lower (``holds``), higher (``does not hold``) or neither (``inconclusive``)."""
    if not summaries or metric not in summaries[0].values:
        return []
    ref = summaries[0]
    rows = []
    for s in summaries[1:]:
        if metric not in s.values:
            continue
        diff = difference_ci(s.values[metric], ref.values[metric])
        rows.append({"label": s.label, "reference": ref.label, "metric": metric, "difference": diff.as_dict(),
                     "lower_than_reference": verdict(s.values[metric], ref.values[metric], higher_is_better=False)})
    return rows


def _ci_cell(ci: MeanCI | None, spec: str) -> str:
    """``mean ± half-width`` in the metric's format; the mean alone when there is no interval (one seed)."""
    if ci is None:
        return ""
    if ci.n < 2 or not math.isfinite(ci.half_width):
        return format(ci.mean, spec)
    return f"{format(ci.mean, spec)} ± {format(ci.half_width, spec)}"


SEED_HEADERS = ["model", "seeds", "params", "val loss", "val ppl", "val bits/byte", "best bits/byte", "train loss",
                "tok/s", "minutes", "peak MiB (train step)"]


def _summary_cells(s: ModelSummary) -> list[str]:
    mem = None if s.peak_mem_bytes is None else s.peak_mem_bytes / 2**20
    ci = [_ci_cell(s.stats.get(k), spec) for k, spec in SEED_METRICS.items()]
    return [s.label, str(len(s.seeds)), _fmt(s.params and s.params / 1e6, ".2f") + ("M" if s.params else ""), *ci,
            _fmt(mem, ".1f")]


def _difference_line(d: dict[str, Any]) -> str:
    ci = d["difference"]
    word = {"holds": "lower", "does not hold": "higher"}.get(d["lower_than_reference"], "inconclusive")
    width = "–" if ci["ci95"] is None else f"{ci['ci95']:.4f}"
    return f"| {d['label']} | {ci['mean']:+.4f} ± {width} | {word} |"


def seeds_markdown(result: CompareResult, summaries: list[ModelSummary], diffs: list[dict[str, Any]],
                   with_plot: bool) -> str:
    cfg = result.config
    alt = "validation loss and bits per byte, mean over seeds with the 95 % interval"
    lines = _head(result, alt if with_plot else None)
    lines += [f"| {' | '.join(SEED_HEADERS)} |", "|---|" + "---:|" * (len(SEED_HEADERS) - 1)]
    lines += [f"| {' | '.join(_summary_cells(s))} |" for s in summaries]
    lines += ["", f"Each value is the mean over the model's seeds ± the half-width of its 95 % Student-t interval "
              f"(seeds {', '.join(map(str, result.seeds))}). Metrics are the last validation; tok/s is the median "
              "logged training throughput; peak memory is one training micro-step measured as `attnlab bench` does "
              "(once per model).", ""]
    if diffs:
        ref = diffs[0]["reference"]
        lines += [f"## Bits per byte against {ref}", "",
                  f"Mean difference (model − {ref}) ± the half-width of its 95 % Welch interval; *lower* or *higher* "
                  "when the whole interval is on that side, else *inconclusive*.", "",
                  f"| model | Δ val bits/byte vs {ref} | verdict |", "|---|---:|---|"]
        lines += [_difference_line(d) for d in diffs] + [""]
    lines += ["## Every run", "", "| model | seed | val loss | val bits/byte | best bits/byte | train loss | minutes |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for o in result.outcomes:
        if o.error is None:
            lines.append(f"| {o.label} | {o.seed} | {_fmt(o.val_loss, '.4f')} | {_fmt(o.val_bpb, '.4f')} | "
                         f"{_fmt(o.best_val_bpb, '.4f')} | {_fmt(o.train_loss, '.4f')} | "
                         f"{_fmt(o.train_minutes, '.1f')} |")
    lines += [""]
    failed = [o for o in result.outcomes if o.error is not None]
    if failed:
        lines += ["## Not run", ""]
        lines += [f"- `{o.label}`" + (f" (seed {o.seed})" if o.seed is not None else "") + f": {o.error}"
                  for o in failed] + [""]
    samples = _first_seed_samples(result)
    if samples:
        prompt = cfg.train.get("sample_prompt", "\n")
        lines += ["## Samples", "", f"Prompt {prompt!r}, seed {result.seeds[0]} (the first seed's runs), top-k 50, "
                  "temperature 0.8.", ""]
        lines += [f"| {' | '.join(samples)} |", "|" + "---|" * len(samples)]
        lines += [f"| {' | '.join(_sample_cell(t) for t in samples.values())} |", ""]
    lines += ["## Settings", "", "```yaml", yaml.safe_dump({"command": "compare", **_plain(cfg)}, sort_keys=False).strip(),
              "```", "", f"Runs: `{result.report_dir}/runs/` (the first seed's in `runs/<model>/`, the others in "
              "`runs/<model>--seed-<seed>/`). Re-running the same command reuses finished runs; a larger `--seeds` "
              "trains only the new ones.", ""]
    return "\n".join(lines)


def _first_seed_samples(result: CompareResult) -> dict[str, str]:
    return {o.label: o.sample for o in result.outcomes
            if o.error is None and o.seed == result.seeds[0] and o.sample}


def seeds_html(result: CompareResult, summaries: list[ModelSummary], diffs: list[dict[str, Any]],
               with_plot: bool) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in SEED_HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _summary_cells(s)) + "</tr>" for s in summaries)
    diff_cells = [_difference_line(d).strip("|").split("|") for d in diffs]
    diff_rows = "".join("<tr>" + "".join(f"<td>{esc(c.strip())}</td>" for c in cells) + "</tr>" for cells in diff_cells)
    diff_table = (f"<h2>Bits per byte against {esc(diffs[0]['reference'])}</h2><table><tr><th>model</th>"
                  f"<th>Δ val bits/byte (95 % CI)</th><th>verdict</th></tr>{diff_rows}</table>") if diffs else ""
    samples = "".join(f"<div class='s'><h3>{esc(label)}</h3><pre>{esc(text)}</pre></div>"
                      for label, text in _first_seed_samples(result).items())
    failed = "".join(f"<li><code>{esc(o.label)}</code> (seed {o.seed}): {esc(o.error)}</li>"
                     for o in result.outcomes if o.error)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>attnlab compare: {esc(result.config.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
.row{{display:flex;gap:1em}}.s{{flex:1;min-width:0}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:8px}}</style>
</head><body><h1>attnlab compare: {esc(result.config.name)}</h1>
{''.join(f'<p>{esc(line)}</p>' for line in _setup_lines(result))}
{'<img src="curves.png" style="max-width:100%">' if with_plot else ''}
<p>Mean over seeds ± the half-width of the 95 % Student-t interval.</p>
<table><tr>{head}</tr>{body}</table>{diff_table}{f'<h2>Not run</h2><ul>{failed}</ul>' if failed else ''}
<h2>Samples (first seed)</h2><div class="row">{samples}</div></body></html>
"""


def write_seeds_report(result: CompareResult) -> dict[str, Path]:
    """The report of a compare with several seeds per model (see the module docstring)."""
    out = result.report_dir
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise_models(result)
    diffs = differences(summaries)
    paths: dict[str, Path] = {}
    groups = {label: [o.curve for o in outcomes if o.error is None] for label, outcomes in result.by_model().items()}
    groups = {label: curves for label, curves in groups.items() if curves}
    if groups:
        paths["plot"] = write_band_plot(groups, out / "curves.png", _subtitle(result))
    rows = [{k: getattr(o, k) for k in SEED_FIELDS} for o in result.outcomes]
    write_json(out / "results.json", {"config": result.config.to_dict(), "env": result.env, "seeds": result.seeds,
                                      "results": rows, "summary": [s.as_dict() for s in summaries],
                                      "differences": diffs, "samples": _first_seed_samples(result)})
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SEED_FIELDS + list(result.env))
        writer.writeheader()
        writer.writerows({**row, **result.env} for row in rows)
    (out / "report.md").write_text(seeds_markdown(result, summaries, diffs, "plot" in paths))
    (out / "report.html").write_text(seeds_html(result, summaries, diffs, "plot" in paths))
    return {**paths, "json": out / "results.json", "csv": out / "results.csv", "markdown": out / "report.md",
            "html": out / "report.html"}


def band(curves: list[dict[str, list]], x_key: str, y_key: str) -> tuple[list[float], list[MeanCI]]:
    """Mean and 95 % interval over seeds of ``y_key`` at every ``x_key`` that each seed's curve has."""
    tables = [dict(zip(c.get(x_key, []), c.get(y_key, []))) for c in curves]
    xs = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    return xs, [mean_ci([t[x] for t in tables]) for x in xs]


def write_band_plot(groups: dict[str, list[dict[str, list]]], path: Path, subtitle: str) -> Path:
    """Validation loss and bits per byte against tokens seen: per model the mean over seeds, its 95 % interval
    as a band, and the mean training loss faint (``attnlab compare --seeds N``)."""
    plt = pyplot()
    fig, (ax_loss, ax_bpb) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, curves) in enumerate(groups.items()):
        color = f"C{i % 10}"
        n = len(curves)
        xs, train = band(curves, "train_tokens", "train_loss")
        if xs:
            ax_loss.plot(xs, [c.mean for c in train], color=color, alpha=0.25, linewidth=1)
        panels = ((ax_loss, "val_loss", f"{label} (val, {n} seeds)"), (ax_bpb, "val_bpb", f"{label} ({n} seeds)"))
        for ax, key, name in panels:
            xs, cis = band(curves, "val_tokens", key)
            if not xs:
                continue
            ax.plot(xs, [c.mean for c in cis], "o-", color=color, label=name, markersize=3)
            if all(math.isfinite(c.half_width) for c in cis):
                ax.fill_between(xs, [c.low for c in cis], [c.high for c in cis], color=color, alpha=0.2, linewidth=0)
    ax_loss.set_ylabel("loss (nats/token); faint: training")
    ax_bpb.set_ylabel("validation bits per byte")
    for ax in (ax_loss, ax_bpb):
        ax.set_xlabel("training tokens")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(subtitle + " — mean over seeds, band: 95 % interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
