"""Fine-tuning a saved run: all weights (--init-from) or LoRA adapters through PEFT (--lora-r), merge, resume."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import attnlab
from attnlab.training import TrainConfig, Trainer, train
from attnlab.training.distributed import DistInfo

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # PEFT's, not ours

VERSE = ["the", "king", "queen", "sword", "crown", "night", "day", "love", "death", "time", "rose", "fair", "sweet"]
FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]


def corpus(path: Path, words: list[str], seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (5,), generator=g).tolist()) + ","
             for _ in range(800)]
    path.write_text("\n".join(lines))
    return path


def options(data, out_dir, **overrides) -> dict:
    values = {"data": str(data), "batch_size": 4, "block_size": 32, "max_steps": 12, "warmup_steps": 2,
              "lr": 1e-2, "eval_interval": 12, "eval_tokens": 1024, "log_interval": 4, "sample_tokens": 0,
              "out_dir": str(out_dir), "progress": False, "tensorboard": False, "seed": 3}
    return {**values, **overrides}


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("texts")
    return {"verse": corpus(root / "verse.txt", VERSE, 0), "fruit": corpus(root / "fruit.txt", FRUIT, 1)}


@pytest.fixture(scope="module")
def source(texts, tmp_path_factory) -> Path:
    """A tiny trained run with its own BPE tokenizer (so "the source's tokenizer" is not the default one)."""
    run = tmp_path_factory.mktemp("source") / "run"
    train(TrainConfig(**options(texts["verse"], run, model="gpt", preset="debug", tokenizer="bpe", vocab_size=300,
                                max_steps=30)))
    return run


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids, use_cache=False).logits


def test_full_finetuning_learns_the_new_text_with_the_sources_tokenizer(source, texts, tmp_path):
    before = attnlab.evaluate(source, str(texts["fruit"]))["loss"]
    result = train(TrainConfig(**options(texts["fruit"], tmp_path / "ft", init_from=str(source), lr=3e-3)))
    assert result.val["loss"] < before - 0.5
    assert (tmp_path / "ft/tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    assert json.loads((tmp_path / "ft/config.json").read_text())["vocab_size"] == attnlab.load(source).config.vocab_size
    assert json.loads((tmp_path / "ft/run_info.json").read_text())["family"] == "gpt"
    src, ft = load_file(str(source / "model.safetensors")), load_file(str(tmp_path / "ft/model.safetensors"))
    assert all(not torch.equal(src[k], ft[k]) for k in src if k.endswith("qkv.weight"))  # every weight trains


def test_full_finetuning_resumes_bit_exactly_without_its_source(source, texts, tmp_path):
    common = options(texts["fruit"], tmp_path / "a", init_from=str(source), checkpoint_interval=4)
    train(TrainConfig(**common))
    shutil.copytree(source, tmp_path / "source")
    stopped = {**common, "out_dir": str(tmp_path / "b"), "init_from": str(tmp_path / "source")}
    train(TrainConfig(**stopped, stop_at_step=5))
    shutil.rmtree(tmp_path / "source")  # the checkpoint holds every weight: the source is no longer needed
    train(TrainConfig(**stopped, resume=True))
    a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_trains_only_the_adapter_and_merges_into_a_plain_model(source, texts, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "lora"
    cfg = TrainConfig(**options(texts["fruit"], run, init_from=str(source), lora_r=4, lora_dropout=0.1, merge=True))
    trainer = Trainer(cfg, DistInfo())
    start = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.fit()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(start[name], p)}
    adapters = {name for name in start if ".lora_A." in name or ".lora_B." in name}
    assert adapters and changed == adapters  # every adapter matrix trained, nothing else moved

    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    adapted = logits(trainer.model, ids)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source), run / "adapter")
    assert torch.equal(logits(reloaded, ids), adapted)
    merged = AutoModelForCausalLM.from_pretrained(run)  # plain transformers, attnlab imported
    assert type(merged).__name__ == "GPTForCausalLM"
    torch.testing.assert_close(logits(merged, ids), adapted, rtol=0, atol=1e-5)
    assert not torch.allclose(logits(attnlab.load(source), ids), adapted, atol=1e-3)
    info = json.loads((run / "run_info.json").read_text())
    assert info["trainable_parameters"] == sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert info["parameters"] == sum(p.numel() for p in attnlab.load(source).parameters())


def test_lora_run_without_merge_keeps_the_adapter_and_still_loads(source, texts, tmp_path):
    run = tmp_path / "lora"
    train(TrainConfig(**options(texts["fruit"], run, init_from=str(source), lora_r=4, lr=2e-2)))
    assert not (run / "model.safetensors").exists() and (run / "tokenizer.json").is_file()
    assert json.loads((run / "adapter/adapter_config.json").read_text())["base_model_name_or_path"] == str(source.resolve())
    before = attnlab.evaluate(source, str(texts["fruit"]))["loss"]
    assert attnlab.evaluate(run, str(texts["fruit"]))["loss"] < before - 0.2  # load() applies the adapter


def test_lora_resume_is_bit_exact(source, texts, tmp_path, run_cli):
    """Through the CLI: a LoRA run stopped at a step and resumed (its options read back from the run)."""
    args = ["--init-from", str(source), "--data", str(texts["fruit"]), "--lora-r", "4", "--lora-dropout", "0.1",
            "--batch-size", "4", "--block-size", "32", "--max-steps", "8", "--warmup-steps", "2",
            "--checkpoint-interval", "3", "--eval-interval", "8", "--eval-tokens", "512", "--sample-tokens", "0",
            "--no-progress", "--no-tensorboard", "--seed", "5"]
    assert run_cli("train", *args, "--out-dir", str(tmp_path / "a"))[0] == 0
    assert run_cli("train", *args, "--out-dir", str(tmp_path / "b"), "--stop-at-step", "4")[0] == 0
    assert json.loads((tmp_path / "b/checkpoints/latest.json").read_text())["step"] == 4
    assert (tmp_path / "b/checkpoints/step-0000004/adapter.pt").is_file()
    assert not (tmp_path / "b/checkpoints/step-0000004/model.safetensors").exists()  # the base is the source's
    code, _, err = run_cli("train", "--out-dir", str(tmp_path / "b"), "--resume")
    assert code == 0, err
    a = load_file(str(tmp_path / "a/adapter/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b/adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_resume_on_a_changed_source_fails_in_one_line(source, texts, tmp_path, run_cli):
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    code, _, err = run_cli("train", "--init-from", str(copy), "--lora-r", "4", "--data", str(texts["fruit"]),
                           "--out-dir", str(tmp_path / "lora"), "--max-steps", "4", "--stop-at-step", "2",
                           "--checkpoint-interval", "2", "--eval-tokens", "256", "--sample-tokens", "0",
                           "--batch-size", "2", "--block-size", "16", "--no-progress", "--no-tensorboard")
    assert code == 0, err
    weights = load_file(str(copy / "model.safetensors"))  # the source trains on: its weights change
    save_file({k: v + 1e-3 if k.endswith("qkv.weight") else v for k, v in weights.items()},
              str(copy / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = run_cli("train", "--out-dir", str(tmp_path / "lora"), "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is not the model this LoRA run started from" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--init-from", "{tmp}/nowhere"], "is not a directory"),
        (["--init-from", "{tmp}"], "holds no model (no config.json)"),
        (["--lora-r", "4"], "lora_r needs init_from"),
        (["--init-from", "{source}", "--merge"], "merge needs lora_r"),
        (["--init-from", "{source}", "--lora-r", "4", "--lora-targets", "nothing_like_this"], "lora_targets"),
    ],
)
def test_finetuning_mistakes_end_in_one_line(args, message, source, texts, tmp_path, run_cli):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{source}", str(source)) for a in args]
    code, out, err = run_cli("train", *args, "--data", str(texts["fruit"]), "--out-dir", str(tmp_path / "run"),
                             "--no-progress", "--max-steps", "2")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_lora_without_peft_says_how_to_install_it(source, texts, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    code, _, err = run_cli("train", "--init-from", str(source), "--lora-r", "4", "--data", str(texts["fruit"]),
                           "--out-dir", str(tmp_path / "run"), "--no-progress")
    assert code == 2
    assert err.strip().splitlines() == ["attnlab train: error: LoRA needs PEFT, an optional dependency: "
                                        + "pip install attnlab[peft]"]
    assert not (tmp_path / "run").exists()
