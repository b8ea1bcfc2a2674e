"""Validation metrics on cases with a known answer."""

import math

import pytest
import torch

import attnlab
from attnlab.data import prepare_data
from attnlab.evaluation import evaluate

TEXT = "Ünïcödé and plain ASCII, emoji 🎭 and more: " * 80


def uniform_model(vocab_size: int):
    """A model whose logits are all zero, i.e. the uniform distribution over the vocabulary."""
    model = attnlab.create_model("gpt", "debug", vocab_size=vocab_size, tie_word_embeddings=False)
    torch.nn.init.zeros_(model.lm_head.weight)
    return model


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_uniform_model_bits_per_byte(tmp_path, tokenizer):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    data = prepare_data(str(path), tokenizer, vocab_size=300, progress=False)
    vocab = len(data.tokenizer)
    metrics = evaluate(uniform_model(vocab), data.val, byte_lengths=data.byte_lengths, batch_size=4, block_size=16)
    n_targets = len(data.val) - 1
    target_bytes = int(data.byte_lengths[data.val.tokens[1:]].sum())
    assert metrics["tokens"] == n_targets
    assert metrics["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert metrics["ppl"] == pytest.approx(vocab, rel=1e-5)
    assert metrics["bpb"] == pytest.approx(n_targets * math.log2(vocab) / target_bytes, rel=1e-6)
    if tokenizer == "byte":  # one byte per token, a uniform guess over 256 bytes + <|endoftext|>
        assert metrics["bpb"] == pytest.approx(math.log2(257), rel=1e-6)
