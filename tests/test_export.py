"""`attnlab export`: a model folder that plain transformers loads with trust_remote_code, attnlab not installed,
giving the same logits and greedy generations as the attnlab model, for every family."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

import attnlab
from attnlab.data.tokenizer import byte_tokenizer
from attnlab.errors import ExportError
from attnlab.export import export_run
from attnlab.export.flatten import flat_names, scan_imports

PROMPT = "Hello there"
NEW_TOKENS = 12

# Runs with attnlab blocked: a meta-path finder ahead of every other (the editable install's included) refuses it.
REMOTE = r'''
import dataclasses, importlib.abc, json, re, sys


class NoAttnlab(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "attnlab" or name.startswith("attnlab."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, NoAttnlab())
try:
    import attnlab  # noqa: F401
    raise SystemExit("attnlab is importable")
except ImportError:
    pass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folders, results_file = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for family, folder in folders.items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True)
    field = "cache" if "cache" in {f.name for f in dataclasses.fields(out)} else "past_key_values"
    results[family] = {"logits": logits, "sequences": out.sequences,
                       "cache": type(getattr(out, field)).__name__, "module": type(model).__module__}
card = open(folders["gpt"] + "/README.md").read()
printed = []
for code in re.findall(r"```python\n(.*?)```", card, re.S):
    exec(re.sub(r'PATH/TO/[^"]+', folders["gpt"], code), {"print": printed.append})
results["card"] = printed
results["attnlab_modules"] = sorted(m for m in sys.modules if m == "attnlab" or m.startswith("attnlab."))
torch.save(results, results_file)
'''


def save_plain(family: str, folder: Path) -> None:
    """A debug model and the byte tokenizer, saved with save_pretrained (no training run)."""
    tok = byte_tokenizer()
    attnlab.create_model(family, "debug", vocab_size=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture
def gpt_run(tmp_path, capsys) -> Path:
    """A saved debug GPT; what saving printed (progress bars) is read off, so a test sees only its command's."""
    save_plain("gpt", tmp_path / "run")
    capsys.readouterr()
    return tmp_path / "run"


def reference(run: Path, out: Path) -> dict:
    """What the attnlab model computes, with the generation settings the export wrote."""
    model = attnlab.load(run)
    model.generation_config = GenerationConfig.from_pretrained(out)
    ids = attnlab.load_tokenizer(run)(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    gen = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True)
    field = "cache" if "cache" in {f.name for f in dataclasses.fields(gen)} else "past_key_values"
    return {"logits": logits, "sequences": gen.sequences, "cache": type(getattr(gen, field)).__name__}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Every family exported from a save_pretrained folder: family → (folder, the attnlab model's results)."""
    root = tmp_path_factory.mktemp("export")
    folders = {}
    for family in attnlab.list_models():
        run, out = root / f"run-{family}", root / f"out-{family}"
        save_plain(family, run)
        export_run(run, out)
        folders[family] = (out, reference(run, out))
    return folders


@pytest.fixture(scope="module")
def remote(exported, tmp_path_factory) -> dict:
    """The exported folders loaded by plain transformers in a Python where attnlab cannot be imported."""
    root = tmp_path_factory.mktemp("remote")
    results = root / "results.pt"
    script = f"PROMPT, NEW_TOKENS = {PROMPT!r}, {NEW_TOKENS}\n" + REMOTE
    folders = json.dumps({family: str(out) for family, (out, _) in exported.items()})
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, folders, str(results)], cwd=root, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(results, weights_only=True)


def test_every_family_loads_without_attnlab_with_the_same_outputs(exported, remote):
    assert set(exported) == set(attnlab.list_models()) and remote["attnlab_modules"] == []
    for family, (_, ref) in exported.items():
        got = remote[family]
        assert got["module"].startswith("transformers_modules."), family
        torch.testing.assert_close(got["logits"], ref["logits"], atol=1e-5, rtol=0, msg=family)
        assert torch.equal(got["sequences"], ref["sequences"]), family
        assert got["cache"] == ref["cache"], family
    caches = {family: remote[family]["cache"] for family in exported}
    assert caches == {"dat": "DATCache", "gpt": "DynamicCache", "leap": "LeapCache", "lsw": "XLMemory",
                      "moa": "MoACache"}


def test_the_cards_usage_code_runs_without_attnlab(remote):
    assert len(remote["card"]) == 1 and remote["card"][0].startswith("Hello")


def _imports(file: Path) -> list[ast.stmt]:
    return [n for n in ast.walk(ast.parse(file.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_the_folder_is_self_contained(exported):
    for family, (out, _) in exported.items():
        names = {p.name for p in out.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= names
        stems = {p.stem for p in out.glob("*.py")}
        for file in out.glob("*.py"):
            for node in _imports(file):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.level == 1 and node.module in stems, (file, node.module)
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] == "attnlab" for m in modules), (file, modules)
        config = json.loads((out / "config.json").read_text())
        module, cls = config["auto_map"]["AutoModelForCausalLM"].split(".")
        assert module == f"modeling_{family}" and cls == config["architectures"][0]
        assert config["auto_map"]["AutoConfig"].split(".")[0] == f"configuration_{family}"
        generation = json.loads((out / "generation_config.json").read_text())
        assert generation["eos_token_id"] == generation["pad_token_id"] == 256 == config["eos_token_id"]


def test_the_card_says_how_to_load_it(exported):
    card = (exported["dat"][0] / "README.md").read_text()
    assert "# dat-40K" in card and "trust_remote_code=True" in card and "- custom_code" in card
    assert "import attnlab" not in card and "No `attnlab train` run is recorded" in card


def test_export_of_a_training_run_from_the_command_line(tmp_path, run_cli):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 100)
    run, out = tmp_path / "run", tmp_path / "out"
    code, _, err = run_cli("train", "--model", "leap", "--preset", "debug", "--data", str(corpus), "--max-steps", "2",
                           "--batch-size", "2", "--block-size", "16", "--eval-interval", "2", "--eval-tokens", "64",
                           "--sample-tokens", "0", "--no-progress", "--out-dir", str(run))
    assert code == 0, err
    code, stdout, err = run_cli("export", str(run), str(out))
    assert code == 0, err
    assert "LeapForCausalLM" in stdout and "trust_remote_code=True" in stdout
    card = (out / "README.md").read_text()
    assert "# run" in card and "trained with `attnlab train`" in card and "**Steps:** 2" in card
    assert not list(tmp_path.glob(".*.partial"))


def test_a_folder_without_a_tokenizer_exports_too(tmp_path):
    attnlab.create_model("gpt", "debug").save_pretrained(tmp_path / "run")
    result = export_run(tmp_path / "run", tmp_path / "out")
    assert not result.tokenizer and "modeling_gpt.py" in result.code_files
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    assert "No tokenizer was saved with the model" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("case, message", [
    ("no-model", "is not a model directory"),
    ("not-attnlab", "not an attnlab one"),
    ("out-not-empty", "exists and is not empty"),
    ("private-alone", "--private applies to the hub repository"),
])
def test_mistakes_end_in_one_line(case, message, tmp_path, gpt_run, run_cli):
    run, out = (gpt_run if case in ("out-not-empty", "private-alone") else tmp_path / "other"), tmp_path / "out"
    run.mkdir(exist_ok=True)
    args = [str(run), str(out)]
    if case == "not-attnlab":
        (run / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    if case == "out-not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    if case == "private-alone":
        args.append("--private")
    code, _, err = run_cli("export", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_push_to_hub_creates_the_repository_and_uploads_the_folder(tmp_path, gpt_run, run_cli, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    run, out = gpt_run, tmp_path / "out"
    code, stdout, err = run_cli("export", str(run), str(out), "--push-to-hub", "someone/tiny-gpt", "--private")
    assert code == 0, err
    assert calls[0] == ("create", "someone/tiny-gpt", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][0] == "upload" and calls[1][1]["folder_path"] == str(out)
    assert "pushed to https://huggingface.co/someone/tiny-gpt" in stdout
    card = (out / "README.md").read_text()
    assert "# tiny-gpt" in card and 'from_pretrained("someone/tiny-gpt", trust_remote_code=True)' in card


def test_push_without_a_reachable_hub_fails_in_one_line(tmp_path, gpt_run, run_cli, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    run, out = gpt_run, tmp_path / "out"
    code, _, err = run_cli("export", str(run), str(out), "--push-to-hub", "someone/tiny-gpt")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "could not push" in err and "someone/tiny-gpt" in err and "the hub cannot be reached" in err
    assert (out / "config.json").is_file()  # the export itself stays, ready to push again


def test_a_hub_that_refuses_fails_in_one_line_with_its_answer(tmp_path, gpt_run, run_cli):
    """Only the HTTP layer is replaced: every request of the hub client gets a 401 answer."""
    import huggingface_hub
    from huggingface_hub.utils import _http

    http = pytest.importorskip("httpx2", reason="the hub client's HTTP library is another one")

    def refuse(request):
        return http.Response(401, json={"error": "Invalid credentials in Authorization header"}, request=request)

    previous = _http._GLOBAL_CLIENT_FACTORY
    huggingface_hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(refuse)))
    try:
        run, out = gpt_run, tmp_path / "out"
        code, _, err = run_cli("export", str(run), str(out), "--push-to-hub", "someone/tiny-gpt")
    finally:
        huggingface_hub.set_client_factory(previous)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "401" in err and "Invalid credentials" in err and "cannot be reached" not in err


def test_flat_names_are_the_shortest_unique_tails():
    names = flat_names(["attnlab.layers.leap", "attnlab.ops.leap", "attnlab.ops.leap.scan", "attnlab.models.config"])
    assert names == {"attnlab.layers.leap": "layers_leap", "attnlab.ops.leap": "ops_leap",
                     "attnlab.ops.leap.scan": "scan", "attnlab.models.config": "config"}


@pytest.mark.parametrize("source, message", [
    ("import yaml", "imports 'yaml'"),
    ("def f():\n    from rich.console import Console", "imports 'rich'"),
    ("from ..ops.relational import forms", "imports the module attnlab.ops.relational.forms itself"),
    ("from .. import load", "imports from the attnlab package itself"),
    ("import attnlab.errors", "cannot be made relative"),
])
def test_imports_an_exported_folder_cannot_satisfy_are_refused(source, message):
    with pytest.raises(ExportError, match=message):
        scan_imports("attnlab.layers.example", False, ast.parse(source))
