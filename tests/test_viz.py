"""attnlab viz: the JSON API (in a background thread) and the page in a real headless Chromium, for the causal LMs
and for DAT's sequence-to-sequence and vision models.

The browser tests need Debian's chromium and Playwright for Python (``scripts/install-browser.sh``) and skip
otherwise. ``ATTNLAB_SCREENSHOTS=docs/screenshots pytest tests/test_viz.py -k browser`` also writes one
screenshot per family and per model kind there (the README's images).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("plotly", reason="attnlab viz needs plotly (pip install 'attnlab[viz]')")

import attnlab  # noqa: E402
from attnlab.data import build_tokenizer  # noqa: E402
from attnlab.viz import make_server  # noqa: E402
from attnlab.viz.screenshots import CHROMIUM_ARGS, explore, explore_image, explore_seq2seq  # noqa: E402

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


@contextlib.contextmanager
def serving(runs: list[str], **options):
    """A server for ``runs`` in a background thread, for the duration of the block."""
    srv = make_server(runs, port=0, **options)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
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
    assert status == 403 and "outside the runs this server was started with" in payload["error"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with serving([str(tmp_path)]) as inside:  # tmp_path is its run: what lies inside it may be named
        status, payload = call(inside, "/api/analyze", {"model": str(tmp_path / "missing"), "prompt": "hi"})
        assert status == 400 and "not a directory" in payload["error"]
        status, payload = call(inside, "/api/analyze", {"model": str(tmp_path / "broken"), "prompt": "hi"})
        assert status == 400 and "cannot load model" in payload["error"] and "not valid JSON" in payload["error"]
    assert call(server, "/api/models")[0] == 200


def test_model_size_limit(runs):
    srv = make_server([runs["gpt"]], port=0, max_parameters=1000)
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
        assert "outside the runs" in page.locator("#error").inner_text()
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


# ------------------------------------------------------------------------------------------ seq2seq and vision
@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, str]:
    """Saved debug models of DAT's other kinds: sequence-to-sequence with the byte tokenizer, and vision models
    for the built-in digits (8×8 grey), relational games (36×36 RGB), and one no sample fits (16×16 RGB, its
    image processor saved beside it)."""
    out = {}
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seq2seq")
    attnlab.create_model("dat-seq2seq", "debug", vocab_size=257, pad_token_id=0, eos_token_id=256,
                         decoder_start_token_id=256).save_pretrained(path)
    build_tokenizer("byte").save_pretrained(path)
    out["seq2seq"] = str(path)
    shapes = {"digits": dict(image_size=8, num_channels=1, num_labels=10),
              "relgames": dict(image_size=36, patch_size=12, num_labels=2, symbol_retrieval="positional"),
              "plain": dict(pooling="mean")}
    for name, options in shapes.items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        model = attnlab.create_model("dat-vision", "debug", **options)
        model.save_pretrained(path)
        if name == "plain":
            model.default_image_processor().save_pretrained(path)
        out[name] = str(path)
    return out


@pytest.fixture(scope="module")
def kinds_server(kinds):
    with serving(list(kinds.values()), max_prompt_tokens=48) as srv:
        yield srv


def png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_model_kinds_are_described(kinds_server, kinds):
    from PIL import Image

    status, info = call(kinds_server, "/api/model", {"model": kinds["seq2seq"]})
    assert status == 200 and (info["kind"], info["family"], info["generates"]) == ("seq2seq", "dat-seq2seq", True)
    status, info = call(kinds_server, "/api/model", {"model": kinds["digits"]})
    assert status == 200 and (info["kind"], info["family"], info["generates"]) == ("image", "dat-vision", False)
    assert info["image"] == {"height": 8, "width": 8, "channels": 1, "patch_size": 4, "classes": 10}
    items = info["examples"]["items"]
    assert info["examples"]["source"] == "scikit-learn digits" and [e["caption"] for e in items] == [
        f"digit {d}" for d in range(10)]
    assert Image.open(io.BytesIO(base64.b64decode(items[0]["png"]))).size == (8, 8)
    status, info = call(kinds_server, "/api/model", {"model": kinds["relgames"]})
    assert len(info["examples"]["items"]) == 6 and info["examples"]["items"][0]["caption"] == "same: yes"
    status, info = call(kinds_server, "/api/model", {"model": kinds["plain"]})
    assert status == 200 and info["examples"] == {"source": None, "items": []}
    status, payload = call(kinds_server, "/api/model", {"model": "/etc"})
    assert status == 403 and "outside the runs" in payload["error"]


def test_seq2seq_analyze_and_generate(kinds_server, kinds):
    status, result = call(kinds_server, "/api/analyze", {"model": kinds["seq2seq"], "source": "abcd", "target": "dc",
                                                         "top_k": 3})
    assert status == 200, result
    assert result["kind"] == "seq2seq" and result["source_tokens"] == list("abcd")
    assert result["target_tokens"] == ["<|endoftext|>", "d", "c"] and len(result["next_token"]["top"]) == 3
    assert len(result["encoder_layers"]) == 2 and len(result["decoder_layers"]) == 2
    cross = torch.tensor(result["decoder_layers"][1]["cross_attention"]["weights"])
    assert cross.shape == (4, 3, 4) and torch.allclose(cross.sum(-1), torch.ones(4, 3), atol=1e-4)
    status, result = call(kinds_server, "/api/analyze", {"model": kinds["seq2seq"], "source": "abcd"})
    assert status == 200 and result["target_tokens"] == ["<|endoftext|>"] and result["target"] == ""
    status, out = call(kinds_server, "/api/generate", {"model": kinds["seq2seq"], "source": "abcd",
                                                       "max_new_tokens": 4})
    assert status == 200 and out["source"] == "abcd" and isinstance(out["text"], str) and out["text"] == out["target"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 400, "the source is empty"),
    ({"prompt": "abc"}, 400, "the source is empty"),
    ({"source": "abc", "target": 5}, 400, "the target must be a string, got 5"),
    ({"source": "x" * 49}, 413, "the source is 49 tokens long; the limit is 48"),
    ({"source": "abc", "target": "y" * 60}, 413, "the target is 60 tokens long"),
    ({"source": "abc", "target": "ab", "position": 3}, 400, "position 3 is outside the target prefix"),
])
def test_bad_seq2seq_requests_are_400_json(kinds_server, kinds, body, status, message):
    code, payload = call(kinds_server, "/api/analyze", {"model": kinds["seq2seq"], **body})
    assert code == status and message in payload["error"], payload


def test_image_analyze_with_examples_and_uploads(kinds_server, kinds):
    status, result = call(kinds_server, "/api/analyze", {"model": kinds["digits"], "example": 3, "top_k": 4})
    assert status == 200, result
    assert result["kind"] == "image" and result["example"] == "digit 3" and result["grid"] == [2, 2]
    assert result["tokens"] == ["cls", "p(0,0)", "p(0,1)", "p(1,0)", "p(1,1)"]
    assert len(result["prediction"]["top"]) == 4 and result["image"]["channels"] == 1
    layer = result["layers"][0]
    assert torch.tensor(layer["patch_attention"]["maps"]).shape == (4, 2, 2)
    assert torch.tensor(layer["relations"]["values"]).shape[1:] == (5, 5)
    status, result = call(kinds_server, "/api/analyze", {"model": kinds["relgames"], "example": "5"})
    assert status == 200 and result["example"] == "occurs: no" and result["grid"] == [3, 3]
    assert result["layers"][0]["symbols"]["assigned"] == [list(range(10))]
    picture = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for image in (png(picture), "data:image/png;base64," + png(picture)):
        status, result = call(kinds_server, "/api/analyze", {"model": kinds["plain"], "image": image})
        assert status == 200 and result["image"]["pixels"] == picture.tolist() and result["example"] is None
        assert result["pooling"] == "mean" and len(result["prediction"]["top"]) == 3  # top_k 10, 3 classes


def test_bad_image_requests_are_answered_in_json(kinds_server, kinds):
    from PIL import Image

    huge = io.BytesIO()
    Image.new("1", (5000, 5000)).save(huge, format="PNG")
    truncated = base64.b64decode(png(np.zeros((16, 16, 3), dtype=np.uint8)))[:-30]
    cases = [
        ("plain", {}, 400, "one of the two"),
        ("digits", {"example": 0, "image": png(np.zeros((8, 8), dtype=np.uint8))}, 400, "one of the two"),
        ("plain", {"example": 0}, 400, "no built-in images fit this model (16×16, 3 channel(s)): upload an image"),
        ("digits", {"example": 10}, 400, "example must be between 0 and 9"),
        ("digits", {"example": "two"}, 400, "example must be an integer"),
        ("plain", {"image": "not base64!"}, 400, "not valid base64"),
        ("plain", {"image": base64.b64encode(b"hello").decode()}, 400, "not a PNG or JPEG"),
        ("plain", {"image": ["a"]}, 400, "image must be a base64 PNG or JPEG"),
        ("plain", {"image": "data:image/png," + png(np.zeros((4, 4), dtype=np.uint8))}, 400, "must be base64"),
        ("plain", {"image": base64.b64encode(huge.getvalue()).decode()}, 413, "the limit is 16,777,216 pixels"),
        ("plain", {"image": base64.b64encode(truncated).decode()}, 400, "damaged"),
    ]
    for model, body, status, message in cases:
        code, payload = call(kinds_server, "/api/analyze", {"model": kinds[model], **body})
        assert code == status and message in payload["error"], (body, payload)
    code, payload = call(kinds_server, "/api/generate", {"model": kinds["digits"], "prompt": "hi"})
    assert code == 400 and "generates nothing" in payload["error"]
    assert call(kinds_server, "/api/analyze", {"model": kinds["digits"], "example": 0})[0] == 200


def test_viz_command_accepts_seq2seq_and_vision_runs(kinds, monkeypatch):
    from attnlab.cli import _Parser
    from attnlab.viz import cli, server

    served = []
    monkeypatch.setattr(server, "serve", lambda runs, *args, **options: served.append(runs))
    parser = _Parser(prog="attnlab")
    cli.add_viz_parser(parser.add_subparsers(dest="command", parser_class=_Parser))
    assert cli.cmd_viz(parser.parse_args(["viz", kinds["seq2seq"], kinds["digits"]])) == 0
    assert served == [[kinds["seq2seq"], kinds["digits"]]]


def test_browser_seq2seq_and_image_views(kinds_server, kinds, tmp_path):
    sync_api = _browser()
    shots = os.environ.get("ATTNLAB_SCREENSHOTS")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        explore_seq2seq(page, kinds_server.url, kinds["seq2seq"], tmp_path / "seq2seq.png")
        assert page.locator("#encoder-maps .heatmap").count() == 4  # 2 SA + 2 RA heads
        assert page.locator("#encoder-maps .heatmap .main-svg").count() >= 4  # drawn by plotly
        assert page.locator("#encoder-relations .heatmap").count() == 2  # one per relation dimension
        assert page.locator("#decoder-maps .heatmap").count() == 4
        assert page.locator("#cross-maps .heatmap").count() == 4
        assert page.locator("#cross-maps .heatmap .main-svg").count() >= 4
        assert page.locator("#target-tokens .tok.selected").inner_text() == "s"  # [start, "s", "n", ...][1]
        assert "next token after target position 1" in page.locator("#s2s-topk").inner_text()
        assert page.locator("#results").is_hidden() and page.locator("#image-results").is_hidden()
        explore_image(page, kinds_server.url, kinds["relgames"], tmp_path / "image.png")
        assert page.locator("#prediction .main-svg").count() >= 1
        assert page.locator("#patch-maps .heatmap").count() == 4 + 1  # per head, and their mean
        assert page.locator("#patch-maps .heatmap .main-svg").count() >= 5
        assert page.locator("#patch-relations .heatmap").count() == 2
        assert page.locator("#image-maps .heatmap").count() == 4
        assert page.locator("#image-relations .heatmap").count() == 2
        assert "same: yes" in page.locator("#img-family").inner_text()
        page.select_option("#img-query", "4")  # a patch as the query: its own row on the grid
        assert "token 4 (p(1,0))" in page.locator("#patch-title").inner_text()
        assert page.locator("#patch-maps .heatmap").count() == 5
        # a prompt-less LM flow still works in the same page afterwards
        page.fill("#model", kinds["plain"])
        page.click("#analyze")
        page.wait_for_selector("#error:not([hidden])")
        assert "upload an image" in page.locator("#error").inner_text()
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            explore_seq2seq(page, kinds_server.url, kinds["seq2seq"], Path(shots) / "dat-seq2seq.png")
            explore_image(page, kinds_server.url, kinds["relgames"], Path(shots) / "dat-vision.png")
        browser.close()


# ------------------------------------------------------------------------------------------ abuse and load
def raw(server, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes on one connection and end the sending side; the status, the JSON body and what followed
    the body (nothing: one answer per request)."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    return status, json.loads(body[:length]), body[length:]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"model": 123, "prompt": "hi"}, 400, "no model given"),
    ({"prompt": ["a"]}, 400, "no model given"),
    ({"model": "RUN", "prompt": 7}, 400, "the prompt is empty"),
    ({"model": "RUN", "prompt": "hi", "top_k": "many"}, 400, 'top_k must be an integer, got "many"'),
    ({"model": "RUN", "prompt": "hi", "top_k": 2.5}, 400, "top_k must be an integer"),
    ({"model": "RUN", "prompt": "hi", "position": 10**30}, 400, "position must be between"),
    ({"model": "RUN", "prompt": "hi", "position": 99}, 400, "position 99 is outside the prompt"),
    ({"model": "RUN", "prompt": "hi", "top_k": {"a": 1}}, 400, "top_k must be an integer"),
])
def test_wrong_types_are_400_json(server, runs, body, status, message):
    body = {k: runs["gpt"] if v == "RUN" else v for k, v in body.items()}
    code, payload = call(server, "/api/analyze", body)
    assert code == status and message in payload["error"], payload


@pytest.mark.parametrize(("body", "message"), [
    ({"temperature": "nan", "greedy": False}, "temperature must be a positive number"),
    ({"temperature": -1, "greedy": False}, "temperature must be a positive number"),
    ({"greedy": "yes"}, 'greedy must be true or false, got "yes"'),
    ({"seed": -5}, "seed must be between 0 and 4294967295"),
    ({"max_new_tokens": "ten"}, "max_new_tokens must be an integer"),
])
def test_wrong_generation_options_are_400_json(server, runs, body, message):
    code, payload = call(server, "/api/generate", {"model": runs["gpt"], "prompt": "ab", **body})
    assert code == 400 and message in payload["error"], payload


def test_malformed_http_is_answered_in_json_and_the_server_stays_up(server):
    cases = [
        (b"POST /api/analyze HTTP/1.1\r\nContent-Length: 9\r\n\r\n{not json", 400, "the request is not JSON"),
        (b"POST /api/analyze HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", 400, "must be a JSON object"),
        (b'POST /api/analyze HTTP/1.1\r\nContent-Length: 3\r\n\r\n"\xff"', 400, "the request is not JSON"),
        (b"POST /api/analyze HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length must be a whole number"),
        (b"POST /api/analyze HTTP/1.1\r\nContent-Length: lots\r\n\r\n", 400, "Content-Length must be a whole number"),
        (b"POST /api/analyze HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "not chunked"),
        (b"POST /api/analyze HTTP/1.1\r\nContent-Length: 20\r\n\r\n{}", 400, "the body ended after 2 of 20 bytes"),
        (b"PUT /api/analyze HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501, "Unsupported method"),
        (b"GARBAGE\r\n\r\n", 400, "Bad request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "Request-URI Too Long"),
        (b"GET /static/../server.py HTTP/1.1\r\nConnection: close\r\n\r\n", 404, "no such page"),
        (b"GET /static/..%2fserver.py HTTP/1.1\r\nConnection: close\r\n\r\n", 404, "no such page"),
        (b"POST /api/nothing HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", 404, "no such endpoint"),
    ]
    for data, status, message in cases:
        started = time.perf_counter()
        code, payload, rest = raw(server, data)  # the connection closes: no request hangs on it
        assert (code, rest) == (status, b"") and message.lower() in payload["error"].lower(), (data[:60], payload)
        assert time.perf_counter() - started < 5
    assert call(server, "/api/models")[0] == 200


def test_oversized_body_is_413_and_the_connection_closes(server):
    big = b"x" * (2 << 20)
    code, payload, rest = raw(server, b"POST /api/analyze HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
    assert code == 413 and "the limit is 1,048,576" in payload["error"] and rest == b""
    claim = b"POST /api/analyze HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\n{}"  # claimed, never sent
    code, payload, _ = raw(server, claim)
    assert code == 413 and "10,000,000,000 bytes" in payload["error"]


def test_model_paths_outside_the_runs_are_refused(server, runs, tmp_path):
    outside = tmp_path / "secret-model"
    attnlab.create_model("gpt", "debug").save_pretrained(outside)
    build_tokenizer("byte").save_pretrained(outside)
    link = Path(runs["gpt"]) / "escape"  # a symbolic link inside a run that leads out of it
    link.symlink_to(outside, target_is_directory=True)
    try:
        attempts = [str(outside), runs["gpt"] + "/../" + outside.parent.name + "/secret-model", str(link),
                    "/etc", "~", "~root/.ssh", "../../../../etc/passwd", "/" + "a/" * 3000]
        for path in attempts:
            status, payload = call(server, "/api/analyze", {"model": path, "prompt": "hi"})
            assert status in (400, 403) and "error" in payload, (path, payload)
            assert status == 403 or "not a valid path" in payload["error"], (path, payload)
        status, payload = call(server, "/api/analyze", {"model": "bad\u0000path", "prompt": "hi"})
        assert status == 400 and "not a valid path" in payload["error"]
        with serving(list(runs.values()), allow_any_path=True) as anything:
            assert call(anything, "/api/analyze", {"model": str(outside), "prompt": "hi"})[0] == 200
    finally:
        link.unlink()


def test_model_cache_is_bounded(runs):
    with serving(list(runs.values()), keep_models=2) as srv:
        for family in ("gpt", "leap", "dat"):
            assert call(srv, "/api/analyze", {"model": runs[family], "prompt": "ab"})[0] == 200
        assert list(srv._models) == [str(Path(runs["leap"]).resolve()), str(Path(runs["dat"]).resolve())]


def test_connections_over_the_limit_get_503_json(runs):
    with serving([runs["gpt"]], max_connections=2) as srv:
        held = [socket.create_connection(srv.server_address[:2], timeout=10) for _ in range(2)]
        try:
            time.sleep(0.2)  # both connections are being served (each thread waits for its request)
            code, payload, rest = raw(srv, b"GET /api/models HTTP/1.1\r\n\r\n")
            assert code == 503 and "too many connections" in payload["error"] and rest == b""
        finally:
            for conn in held:
                conn.close()
        time.sleep(0.2)
        assert call(srv, "/api/models")[0] == 200


def test_200_concurrent_requests_all_get_well_formed_answers(runs):
    """A bounded loopback load test: 200 requests at once, a mix of valid and abusive ones."""
    from attnlab.viz.loadtest import run_load

    with serving([runs["gpt"]]) as srv:
        threads_before = threading.active_count()
        report = run_load(srv, runs["gpt"], requests=200, concurrency=200, timeout=60)
        assert report.unanswered == 0 and report.malformed == 0 and report.unexpected == 0, report.lines()
        assert report.error_answers == 140  # 7 of the 10 kinds are abuse, answered 4xx
        assert call(srv, "/api/models")[0] == 200
        assert len(srv._models) == 1
        deadline = time.time() + 10
        while threading.active_count() > threads_before + 2 and time.time() < deadline:
            time.sleep(0.05)  # every connection was closed: its thread ends
        assert threading.active_count() <= threads_before + 2
