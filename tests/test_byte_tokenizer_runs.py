"""The byte tokenizer's end-of-text token in whole runs: documents joined by it, generation stopping at it,
and runs saved by the 256-id byte tokenizer of earlier releases still loading, evaluating and generating."""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

import attnlab
from attnlab.data.tokenizer import BYTE_TO_CHAR
from attnlab.training import TrainConfig


def test_generation_stops_at_end_of_text(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": "abcde"}) + "\n" for _ in range(400)))
    run = tmp_path / "run"
    attnlab.train(TrainConfig(model="gpt", preset="debug", data=str(corpus), max_steps=80, batch_size=8,
                              block_size=24, lr=3e-3, eval_interval=80, eval_tokens=512, sample_tokens=0,
                              progress=False, tensorboard=False, out_dir=str(run)))
    config = json.loads((run / "config.json").read_text())
    assert config["vocab_size"] == 257 and config["eos_token_id"] == config["pad_token_id"] == 256
    generation = GenerationConfig.from_pretrained(run)
    assert generation.eos_token_id == 256 and generation.pad_token_id == 256

    model, tok = attnlab.load(run), attnlab.load_tokenizer(run)
    ids = tok("abcde", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] == 256 and len(new) < 40  # the document ended, so generation stopped by itself
    assert attnlab.generate(run, "abcde", max_new_tokens=40, top_k=1) == "abcde"


def old_byte_tokenizer() -> PreTrainedTokenizerFast:
    """The byte tokenizer as earlier releases saved it: 256 ids, no special tokens."""
    backend = Tokenizer(models.BPE(vocab={char: byte for byte, char in BYTE_TO_CHAR.items()}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_runs_of_the_256_id_byte_tokenizer_still_work(tmp_path):
    old = tmp_path / "old"
    model = attnlab.create_model("gpt", "debug", vocab_size=256)
    model.save_pretrained(old)
    old_byte_tokenizer().save_pretrained(old)
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be " * 200)

    assert len(attnlab.load_tokenizer(old)) == 256
    metrics = attnlab.evaluate(old, str(text))
    assert 7.0 < metrics["bpb"] < 9.0 and metrics["tokens"] > 0  # an untrained model: about 8 bits per byte
    assert isinstance(attnlab.generate(old, "to be", max_new_tokens=8, seed=0), str)
    loaded = AutoModelForCausalLM.from_pretrained(old)
    with torch.no_grad():
        assert loaded(torch.tensor([[116, 111]])).logits.shape == (1, 2, 256)
