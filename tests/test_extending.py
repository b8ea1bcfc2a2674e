"""docs/extending.md's worked example, built from the page's own code blocks: a new family is one folder under
``models/`` plus one mixer file under ``layers/``, and trains with ``attnlab train`` without touching anything
else (analysis, trainer, bench and CLI stay as they are)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"

CHECKS = r'''
import torch, attnlab
from attnlab.analysis import analyze
from attnlab.data import build_tokenizer
from attnlab.models.hf_compat import output_cache
from transformers import AutoModelForCausalLM

assert "alibi" in attnlab.list_models()
model = attnlab.create_model("alibi", "debug").eval().double()
ids = torch.randint(0, model.config.vocab_size, (2, 12))
full = model(ids).logits
# causality: a changed future token never changes an earlier output
changed = ids.clone(); changed[:, 8] += 1
assert torch.allclose(model(changed).logits[:, :8], full[:, :8], atol=1e-12)
# the distance bias is really there: ALiBi without positions still tells a token's place
assert not torch.allclose(full[0, 3], model(ids[:, 1:]).logits[0, 2])
# cached generation == recomputing the prefix
first = model(ids[:, :7], use_cache=True)
rest = model(ids[:, 7:], cache=output_cache(first), use_cache=True).logits
assert torch.allclose(rest, full[:, 7:], atol=1e-10)
# left padding gives each row what it gets alone
mask = torch.ones_like(ids); mask[1, :4] = 0
padded = model(ids, attention_mask=mask).logits
assert torch.allclose(padded[1, 4:], model(ids[1:, 4:]).logits[0], atol=1e-10)
# the viz analysis shows its maps with the default labels
result = analyze(model.float(), build_tokenizer("byte"), "ALiBi!")
assert result["family"] == "alibi" and result["layers"][0]["attention"]["head_labels"][0] == "head 0"
print("CHECKS OK")
'''


def code_blocks(page: Path) -> dict[str, str]:
    """The page's Python blocks whose first line names the file they are (``# attnlab/...py``)."""
    files = {}
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        first, _, body = block.partition("\n")
        if first.startswith("# attnlab/"):
            files[first[2:].strip()] = body
    return files


def test_the_page_names_one_mixer_file_and_one_model_folder():
    files = sorted(code_blocks(PAGE))
    assert files == ["attnlab/layers/alibi.py", "attnlab/models/alibi/__init__.py",
                     "attnlab/models/alibi/configuration_alibi.py", "attnlab/models/alibi/modeling_alibi.py"]


def test_worked_example_builds_checks_and_trains(tmp_path):
    package = tmp_path / "attnlab"
    shutil.copytree(ROOT / "attnlab", package, ignore=shutil.ignore_patterns("__pycache__"))
    for name, body in code_blocks(PAGE).items():
        target = tmp_path / name
        assert not target.exists(), f"{name} must be a new file"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    checks = subprocess.run([sys.executable, "-c", CHECKS], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert checks.returncode == 0, checks.stderr[-3000:]
    assert "CHECKS OK" in checks.stdout

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "attnlab", "train", "--model", "alibi", "--preset", "debug", "--data", str(corpus),
         "--max-steps", "30", "--batch-size", "8", "--block-size", "32", "--eval-interval", "30",
         "--eval-tokens", "2048", "--sample-tokens", "0", "--no-progress", "--no-tensorboard", "--lr", "3e-3",
         "--out-dir", str(run)],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in losses if "loss" in r]
    assert train_losses[-1] < 0.8 * train_losses[0]  # it learns the repeated sentence
    assert any("val_bpb" in r for r in losses)
    config = json.loads((run / "config.json").read_text())
    assert config["model_type"] == "attnlab_alibi" and config["pos"] == "none"
