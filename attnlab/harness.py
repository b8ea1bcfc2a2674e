"""lm-evaluation-harness on attnlab models: ``simple_evaluate`` through its ``HFLM`` wrapper.

lm-eval is an optional dependency (``pip install attnlab[eval]``), imported only when a task is run. Every
attnlab model is a native causal LM (``max_position_embeddings`` is its ``block_size``, the tokenizer pads and
has eos/bos), so plain HFLM runs it. ``evaluate_tasks`` tells HFLM the model is causal (attnlab's model types
are registered with the Auto classes, not in transformers' own lists, which HFLM consults) and, through
``lm_class``, fits the default generation length into small contexts.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
from pathlib import Path
from typing import Any

from .errors import AttnlabError, ConfigError

LM_EVAL_MISSING = "running lm-eval tasks needs lm-evaluation-harness, an optional dependency: pip install attnlab[eval]"
DTYPES = {"float32": None, "bfloat16": "bfloat16"}


def require_lm_eval() -> None:
    """Fail in one line, before any model is loaded, when lm-eval is not installed."""
    try:
        importlib.import_module("lm_eval")
    except ImportError:
        raise AttnlabError(LM_EVAL_MISSING) from None


def evaluate_tasks(
    run_or_model: Any,
    tasks: list[str] | str,
    *,
    tokenizer: Any = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    include_path: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    log_samples: bool = False,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of a run directory (or a loaded model and its tokenizer) on ``tasks``.

    ``tasks`` are lm-eval task or group names (a list or comma-separated); ``include_path`` adds a folder of
    task YAMLs; ``limit`` caps the documents per task (a fraction when below 1). ``dtype="bfloat16"`` runs under
    bf16 autocast. Returns lm-eval's results dict (``results``, ``n-samples``, ``configs``...; ``samples``
    with ``log_samples``); ``metric_rows`` flattens it.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate

    manager = task_manager(include_path)
    names = resolve_tasks(manager, task_names(tasks))
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model, tokenizer = _model_and_tokenizer(run_or_model, tokenizer, device)
    lm = lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal",
                    mixed_precision_dtype=DTYPES[dtype])
    return simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                           log_samples=log_samples)


@functools.cache
def lm_class() -> type:
    """lm-eval's ``HFLM``, with a default generation length that fits the model's context.

    HFLM generates up to 256 tokens when a ``generate_until`` task sets no ``max_gen_toks``, and refuses any
    model whose context (``block_size``) is not longer than that; here the default is also at most half the
    context, so small models run such tasks with the other half for the prompt.
    """
    from lm_eval.models.huggingface import HFLM

    class AttnlabLM(HFLM):
        @property
        def max_gen_toks(self) -> int:
            return min(super().max_gen_toks, self.max_length // 2)

    return AttnlabLM


def task_names(tasks: list[str] | str) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` as a list of names, blanks dropped."""
    parts = tasks.split(",") if isinstance(tasks, str) else [p for t in tasks for p in t.split(",")]
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise ConfigError("no lm-eval task given")
    return names


def task_manager(include_path: str | Path | None = None):
    """lm-eval's index of tasks, with the YAMLs under ``include_path`` added; built once per folder and
    process, as indexing lm-eval's thousands of task files takes seconds."""
    if include_path is None:
        return _indexed_tasks(None)
    if not Path(include_path).is_dir():
        raise ConfigError(f"include path is not a folder: {include_path}")
    return _indexed_tasks(str(Path(include_path).resolve()))


@functools.lru_cache(maxsize=8)
def _indexed_tasks(include_path: str | None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def resolve_tasks(manager, names: list[str]) -> list[str]:
    """The names with glob patterns (``arc_*``) expanded, as lm-eval's own command line does; an unknown name
    fails here in one line rather than deep inside lm-eval after the model has loaded."""
    known, resolved, unknown = set(manager.all_tasks), [], []
    for name in names:
        matches = [name] if name in known else manager.match_tasks([name])
        resolved += [match for match in matches if match not in resolved]
        if not matches:
            unknown.append(name)
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s): {', '.join(unknown)} (`lm-eval list tasks` lists them; "
                          "an include path adds a folder of task YAMLs)")
    return resolved


def _model_and_tokenizer(run_or_model: Any, tokenizer: Any, device: str):
    """A run directory loads with its own tokenizer; a model object needs its tokenizer given."""
    if isinstance(run_or_model, (str, Path)):
        from . import load, load_tokenizer
        from .training.distributed import DistInfo, pick_device

        model = load(run_or_model, device=str(pick_device(device, DistInfo())))
        return model, tokenizer or load_tokenizer(run_or_model)
    if tokenizer is None:
        raise ConfigError("evaluating a model object needs its tokenizer (tokenizer=...)")
    return run_or_model.eval(), tokenizer


# ------------------------------------------------------------------------------------------ report
def metric_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task and metric: task, metric (with its filter when not the default), value, stderr, n."""
    rows = []
    counts = results.get("n-samples", {})
    for task, values in results["results"].items():
        n = counts.get(task, {}).get("effective")
        for key, value in values.items():
            metric, _, kind = key.partition(",")
            if not kind or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{metric}_stderr,{kind}")
            rows.append({"task": task, "metric": metric if kind == "none" else f"{metric} ({kind})",
                         "value": float(value), "stderr": _number(stderr), "n": n})
    return rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned plain-text columns, stderr as ± and a dash where lm-eval gives none."""
    header = ("task", "metric", "value", "stderr", "n")
    cells = [(r["task"], r["metric"], _shown(r["value"]), "–" if r["stderr"] is None else f"± {_shown(r['stderr'])}",
              "" if r["n"] is None else str(r["n"]))
             for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(w) if i < 2 else text.rjust(w) for i, (text, w) in enumerate(zip(row, widths)))
             for row in [header, *cells]]
    return "\n".join(line.rstrip() for line in lines)


def _shown(value: float) -> str:
    """Four decimals; perplexities of untrained models in exponent form, so the columns stay narrow."""
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """lm-eval's results as JSON (task configs included), as its own ``--output_path`` writes them."""
    from lm_eval.utils import handle_non_serializable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=handle_non_serializable) + "\n", encoding="utf-8")
    return path
