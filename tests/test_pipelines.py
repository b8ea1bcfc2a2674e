"""Hugging Face pipelines and batched generation on every family: prompts of different lengths generated in
one left-padded batch give exactly what each gives alone."""

from __future__ import annotations

import pytest
from transformers import pipeline

import attnlab

PROMPTS = ["To be", "or not to be, that is", "Q", "the question whether tis nobler"]


@pytest.mark.parametrize("family", attnlab.list_models())
def test_batched_pipeline_equals_one_by_one(debug_runs, family):
    generator = pipeline("text-generation", model=str(debug_runs[family]), device="cpu")
    kwargs = dict(max_new_tokens=6, do_sample=False, return_full_text=True)
    alone = [generator(p, **kwargs)[0]["generated_text"] for p in PROMPTS]
    batched = [out[0]["generated_text"] for out in generator(PROMPTS, batch_size=4, **kwargs)]
    assert batched == alone
    assert all(text.startswith(p) for text, p in zip(batched, PROMPTS))


@pytest.mark.parametrize("family", attnlab.list_models())
def test_generate_batch_equals_one_by_one(debug_runs, family):
    alone = [attnlab.generate(debug_runs[family], p, max_new_tokens=6, greedy=True) for p in PROMPTS]
    assert attnlab.generate_batch(debug_runs[family], PROMPTS, max_new_tokens=6, greedy=True, batch_size=3) == alone


def test_cli_generates_several_prompts(run_cli, debug_runs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Q\n\nthe question\n")
    code, out, err = run_cli("generate", str(debug_runs["gpt"]), "--prompt", "To be", "--prompts-file", str(prompts),
                             "--max-new-tokens", "4", "--greedy")
    assert code == 0, err
    blocks = out.split("===== prompt ")[1:]
    assert len(blocks) == 3 and blocks[0].startswith("1 =====\nTo be") and blocks[2].startswith("3 =====\nthe question")
    alone = attnlab.generate(debug_runs["gpt"], "the question", max_new_tokens=4, greedy=True)
    assert blocks[2].split("\n", 1)[1].rstrip("\n") == alone
    code, _, err = run_cli("generate", str(debug_runs["gpt"]), "--prompts-file", str(tmp_path / "missing.txt"))
    assert code == 2 and "prompts file not found" in err
