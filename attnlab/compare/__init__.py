"""Quality comparisons: ``attnlab compare`` trains several models on identical data, tokenizer, token budget,
seed and schedule, and writes one report (table, curves, samples side by side).

Modules: ``run`` (the options and the training of each model, resumable), ``report`` (Markdown, HTML, CSV,
JSON and the curves plot), ``cli``. Speed and memory are measured by ``attnlab.bench``.
"""

from .report import write_report
from .run import CompareConfig, CompareResult, ModelOutcome, run_compare

__all__ = ["CompareConfig", "CompareResult", "ModelOutcome", "run_compare", "write_report"]
