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
