import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's real attnlab cache from tests."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path_factory.mktemp("attnlab-cache")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def run_cli(capsys):
    """``attnlab`` in-process: run(*args) → (exit code, stdout, stderr), argparse's exits included."""
    from attnlab.cli import main

    def run(*args):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def debug_runs(tmp_path_factory):
    """A saved debug model of every family with the byte tokenizer, as a run directory holds them (read only)."""
    import attnlab
    from attnlab.data import build_tokenizer

    saved = {}
    tok = build_tokenizer("byte")
    for family in attnlab.list_models():
        torch.manual_seed(0)
        model = attnlab.create_model(family, "debug", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        saved[family] = path
    return saved
