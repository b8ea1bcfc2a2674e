import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's real attnlab cache from tests."""
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path_factory.mktemp("attnlab-cache")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
