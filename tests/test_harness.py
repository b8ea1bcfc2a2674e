"""lm-evaluation-harness on every family, offline: tasks written here (a local JSONL dataset and task YAMLs),
scored with batch size 1 and 4, give the same log-likelihoods and greedy generations."""

from __future__ import annotations

import json
import math

import pytest

import attnlab
from attnlab.errors import ConfigError

pytest.importorskip("lm_eval")

from attnlab.harness import (
    evaluate_tasks,
    format_table,
    lm_class,
    metric_rows,
    resolve_tasks,
    task_manager,
    task_names,
)

DOCS = [
    ("To be, or not to", [" be", " see", " go"]),
    ("The quick brown", [" fox", " dog", " cat"]),
    ("one, two,", [" three", " four", " five"]),
    ("Now is the winter of our", [" discontent", " summer", " hope"]),
    ("a", [" b", " c", " d"]),
    ("All the world's a", [" stage", " garden", " sea"]),
]
MC_TASK = """task: toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GEN_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  do_sample: false{max_gen_toks}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """Tasks over six documents: multiple choice (log-likelihoods) and greedy generation, of 8 tokens, or of
    lm-eval's default length (``toy_open``: 256 tokens would not fit a debug model's 64-token context)."""
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": 0}) + "\n" for q, c in DOCS))
    (folder / "toy_choice.yaml").write_text(MC_TASK.format(data=data))
    (folder / "toy_continue.yaml").write_text(GEN_TASK.format(name="toy_continue", data=data,
                                                              max_gen_toks="\n  max_gen_toks: 8"))
    (folder / "toy_open.yaml").write_text(GEN_TASK.format(name="toy_open", data=data, max_gen_toks=""))
    return folder


def loglikelihoods(results) -> list[float]:
    """Every (document, choice) log-likelihood, in document order; lm-eval answers each as [(ll, is_greedy)]."""
    return [resp[0][0] for sample in results["samples"]["toy_choice"] for resp in sample["resps"]]


def generations(results) -> list[str]:
    return [sample["resps"][0][0] for sample in results["samples"]["toy_continue"]]


@pytest.mark.parametrize("family", attnlab.list_models())
def test_batch_size_does_not_change_scores_or_generations(debug_runs, tasks_dir, family):
    scored = {bs: evaluate_tasks(debug_runs[family], ["toy_choice", "toy_continue"], include_path=tasks_dir,
                                 batch_size=bs, device="cpu", log_samples=True) for bs in (1, 4)}
    one, four = loglikelihoods(scored[1]), loglikelihoods(scored[4])
    assert len(one) == 3 * len(DOCS) and all(math.isfinite(ll) and ll < 0 for ll in one)
    assert one == pytest.approx(four, abs=1e-4)
    assert generations(scored[1]) == generations(scored[4])
    assert len(generations(scored[1])) == len(DOCS)
    accuracy = scored[1]["results"]["toy_choice"]["acc,none"]
    assert scored[4]["results"]["toy_choice"]["acc,none"] == accuracy
    best = [max(range(3), key=lambda k: one[3 * d + k]) for d in range(len(DOCS))]
    assert accuracy == pytest.approx(sum(choice == 0 for choice in best) / len(DOCS))


def test_default_generation_length_fits_a_small_context(debug_runs):
    model, tok = attnlab.load(debug_runs["gpt"]), attnlab.load_tokenizer(debug_runs["gpt"])
    lm = lm_class()(pretrained=model, tokenizer=tok, backend="causal")
    assert lm.max_length == model.config.block_size == 64  # max_position_embeddings is block_size
    assert lm.max_gen_toks == 32
    assert lm.tok_decode([lm.prefix_token_id], skip_special_tokens=False) == "<|endoftext|>"


def test_plain_hflm_scores_as_evaluate_tasks(debug_runs, tasks_dir):
    """The route docs/evaluation.md shows: lm-eval's own HFLM on a loaded attnlab model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    model, tok = attnlab.load(debug_runs["dat"]), attnlab.load_tokenizer(debug_runs["dat"])
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, backend="causal")
    plain = simple_evaluate(model=lm, tasks=["toy_choice"], task_manager=task_manager(tasks_dir), log_samples=True)
    ours = evaluate_tasks(model, "toy_choice", tokenizer=tok, include_path=tasks_dir, batch_size=2, log_samples=True)
    assert loglikelihoods(plain) == pytest.approx(loglikelihoods(ours), abs=1e-4)


def test_cli_prints_the_metrics_and_writes_the_results(debug_runs, tasks_dir, tmp_path, run_cli):
    out_file = tmp_path / "out" / "results.json"
    code, out, err = run_cli("eval", str(debug_runs["leap"]), "--tasks", "toy_*", "--include-path", str(tasks_dir),
                             "--limit", "4", "--batch-size", "2", "--device", "cpu", "--output", str(out_file))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr", "n"]
    saved = json.loads(out_file.read_text())
    rows = {(line.split()[0], line.split()[1]): line.split() for line in lines[1:]}
    assert set(rows) == {("toy_choice", "acc"), ("toy_continue", "exact_match"), ("toy_open", "exact_match")}
    for (task, metric), cells in rows.items():
        assert float(cells[2]) == pytest.approx(saved["results"][task][f"{metric},none"], abs=1e-4)
        assert cells[-1] == "4" and saved["n-samples"][task]["effective"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "no_such_task", "--include-path", "{tasks}"], "unknown lm-eval task(s): no_such_task"),
        (["--tasks", "toy_choice", "--data", "shakespeare"], "--data applies to scoring a dataset, not to --tasks"),
        (["--limit", "3"], "--limit applies to --tasks only"),
        (["--tasks", "toy_choice", "--include-path", "{tasks}", "--limit", "0"], "--limit must be positive"),
    ],
)
def test_cli_task_mistakes_end_in_one_line(debug_runs, tasks_dir, run_cli, args, message):
    code, _, err = run_cli("eval", str(debug_runs["gpt"]), *[a.replace("{tasks}", str(tasks_dir)) for a in args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_task_names_and_globs(tasks_dir):
    assert task_names("a, b,,c") == ["a", "b", "c"]
    assert task_names(["a,b", "c"]) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="no lm-eval task"):
        task_names(" , ")
    manager = task_manager(tasks_dir)
    assert manager is task_manager(str(tasks_dir))  # indexed once per folder
    assert resolve_tasks(manager, ["toy_continue", "toy_*"]) == ["toy_continue", "toy_choice", "toy_open"]


def test_metric_rows_and_table():
    results = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.25, "f1,strict": 1.0,
                          "f1_stderr,strict": "N/A", "word_perplexity,none": 1.5e12, "word_perplexity_stderr,none": "N/A"}},
        "n-samples": {"t": {"original": 10, "effective": 6}},
    }
    rows = metric_rows(results)
    assert rows == [
        {"task": "t", "metric": "acc", "value": 0.5, "stderr": 0.25, "n": 6},
        {"task": "t", "metric": "f1 (strict)", "value": 1.0, "stderr": None, "n": 6},
        {"task": "t", "metric": "word_perplexity", "value": 1.5e12, "stderr": None, "n": 6},
    ]
    assert format_table(rows).splitlines() == [
        "task  metric             value    stderr  n",
        "t     acc               0.5000  ± 0.2500  6",
        "t     f1 (strict)       1.0000         –  6",
        "t     word_perplexity  1.5e+12         –  6",
    ]
