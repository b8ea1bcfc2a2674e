"""attnlab viz: the JSON API (in a background thread) and the page in a real headless Chromium.

The browser test needs Debian's chromium and Playwright for Python (``scripts/install-browser.sh``) and skips
otherwise. ``ATTNLAB_SCREENSHOTS=docs/screenshots pytest tests/test_viz.py -k browser`` also writes one
screenshot per family there (the README's images).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("plotly", reason="attnlab viz needs plotly (pip install 'attnlab[viz]')")

import attnlab  # noqa: E402
from attnlab.data import build_tokenizer  # noqa: E402
from attnlab.viz import make_server  # noqa: E402
from attnlab.viz.screenshots import CHROMIUM_ARGS, explore  # noqa: E402

FAMILIES = ["gpt", "dat", "leap", "lsw", "moa"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    """A saved debug model + byte tokenizer per family."""
    tok, out = build_tokenizer("byte"), {}
    for family in FAMILIES:
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(family)
        attnlab.create_model(family, "debug").save_pretrained(path)
        tok.save_pretrained(path)
        out[family] = str(path)
    return out


@pytest.fixture(scope="module")
def server(runs):
    srv = make_server(list(runs.values()), port=0, max_prompt_tokens=48)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(server, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_binds_localhost_and_lists_models(server, runs):
    assert server.server_address[0] == "127.0.0.1"
    status, payload = call(server, "/api/models")
    assert status == 200 and payload["models"] == list(runs.values())
    assert payload["limits"]["max_prompt_tokens"] == 48


def test_serves_page_and_local_plotly(server):
    with urllib.request.urlopen(server.url, timeout=10) as page:
        html = page.read().decode()
    assert "/static/plotly.min.js" in html and "http" not in html.split("<body>")[0].replace("http-equiv", "")
    with urllib.request.urlopen(server.url + "static/plotly.min.js", timeout=10) as js:
        assert len(js.read()) > 1_000_000


@pytest.mark.parametrize("family", FAMILIES)
def test_analyze(server, runs, family):
    status, payload = call(server, "/api/analyze", {"model": runs[family], "prompt": "Hello there", "top_k": 3})
    assert status == 200, payload
    assert payload["family"] == family and len(payload["tokens"]) == 11
    assert len(payload["next_token"]["top"]) == 3 and len(payload["layers"]) == payload["n_layers"]


def test_oversized_prompt_rejected_server_stays_up(server, runs):
    status, payload = call(server, "/api/analyze", {"model": runs["gpt"], "prompt": "x" * 49})
    assert status == 413 and "49 tokens" in payload["error"] and "limit is 48" in payload["error"]
    status, payload = call(server, "/api/analyze", {"model": runs["gpt"], "prompt": "x" * 10_000})
    assert status == 413
    assert call(server, "/api/analyze", {"model": runs["gpt"], "prompt": "ok"})[0] == 200


def test_bad_model_path_is_an_error_json(server, tmp_path):
    status, payload = call(server, "/api/analyze", {"model": str(tmp_path / "missing"), "prompt": "hi"})
    assert status == 400 and "not a directory" in payload["error"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    status, payload = call(server, "/api/analyze", {"model": str(tmp_path / "broken"), "prompt": "hi"})
    assert status == 400 and "cannot load model" in payload["error"]
    assert call(server, "/api/models")[0] == 200


def test_model_size_limit(runs):
    srv = make_server([], port=0, max_parameters=1000)
    try:
        with pytest.raises(Exception, match="parameters; this server's limit is 1,000"):
            srv.model(runs["gpt"])
    finally:
        srv.server_close()


def test_generate_and_bad_requests(server, runs):
    status, payload = call(server, "/api/generate", {"model": runs["leap"], "prompt": "ab", "max_new_tokens": 4})
    assert status == 200 and payload["text"].startswith("ab")
    assert call(server, "/api/generate", {"model": runs["leap"], "prompt": "ab", "max_new_tokens": 10_000})[0] == 400
    assert call(server, "/api/analyze", {"model": runs["gpt"], "prompt": ""})[0] == 400
    assert call(server, "/api/nope", {})[0] == 404


def test_viz_cli_parser():
    from attnlab.cli import _Parser
    from attnlab.viz.cli import add_viz_parser

    parser = _Parser(prog="attnlab")
    add_viz_parser(parser.add_subparsers(dest="command", parser_class=_Parser))
    args = parser.parse_args(["viz", "runs/a", "--port", "9000"])
    assert args.runs == ["runs/a"] and args.port == 9000 and args.host == "127.0.0.1"


# ------------------------------------------------------------------------------------------ real browser
def _browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: run scripts/install-browser.sh (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: run scripts/install-browser.sh")
    return sync_api


def _explore(page, server, model: str, screenshot: Path) -> None:
    explore(page, server.url, model, screenshot)


def test_browser_end_to_end(server, runs, tmp_path):
    sync_api = _browser()
    args = CHROMIUM_ARGS
    shots = os.environ.get("ATTNLAB_SCREENSHOTS")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        shot = tmp_path / "viz-dat.png"
        _explore(page, server, runs["dat"], shot)
        assert page.locator("#attention-maps .heatmap").count() == 4  # 2 SA + 2 RA heads
        assert page.locator("#attention-maps .heatmap .main-svg").count() >= 4  # drawn by plotly
        assert page.locator("#relation-maps .heatmap").count() >= 1
        assert page.locator("#symbols .heatmap").count() >= 1
        assert page.locator("#tokens .tok.selected").inner_text() == "E"  # "ROMEO"[3]
        assert "next token after position 3" in page.locator("#topk").inner_text()
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        # a bad path shows an error in the page, and the page keeps working
        page.fill("#model", "/no/such/model")
        page.click("#analyze")
        page.wait_for_selector("#error:not([hidden])")
        assert "not a directory" in page.locator("#error").inner_text()
        page.fill("#model", runs["moa"])
        page.fill("#prompt", "ROMEO: But soft, what light")
        page.click("#generate")
        page.wait_for_selector("#generation:not([hidden])", timeout=20_000)
        assert page.locator("#generation").inner_text().startswith("ROMEO")
        if shots:  # the README's screenshots, one per family
            Path(shots).mkdir(parents=True, exist_ok=True)
            for family in FAMILIES:
                _explore(page, server, runs[family], Path(shots) / f"{family}.png")
        browser.close()
