"""The viz app's HTTP server: static page + a small JSON API over ``attnlab.analysis``.

Routes: ``GET /`` (the page), ``GET /static/<file>`` (app.js, app.css, plotly.min.js from the ``plotly``
package), ``GET /api/models``, ``POST /api/model`` (what a model takes: its kind, and sample images for an image
model), ``POST /api/analyze`` and ``POST /api/generate`` (JSON bodies). Every error is a JSON ``{"error": message}``
with a 4xx/5xx status, including those of malformed HTTP and unknown methods; one request's failure (a bad path, a
model that does not load, an oversized prompt) never stops the server.

A request's body depends on the kind of model (``attnlab.analysis.analysis_kind``): a causal LM reads ``prompt``;
a sequence-to-sequence model ``source`` and an optional ``target`` prefix; an image classifier ``image`` (a base64
PNG or JPEG, or a ``data:`` URL) or ``example`` (the index of a built-in sample image, ``attnlab.viz.examples``).

What a request can cost is bounded: bodies up to ``MAX_BODY`` bytes, ``max_connections`` connections at once
(more are answered 503), a socket timeout for slow clients, one forward pass at a time (a request that waits
longer than ``busy_timeout`` is answered 503), and at most ``keep_models`` loaded models (least recently used
dropped). Models are read only from inside the run directories the server was started with, unless it was
started with ``allow_any_path``: a request cannot make it read other files.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..analysis import analysis_kind
from ..errors import AttnlabError

STATIC = Path(__file__).with_name("static")
MAX_BODY = 1 << 20  # bytes of a request body: an image upload (a 224×224 PNG is at most ~200 KB in base64)
MAX_IMAGE_PIXELS = 4096 * 4096  # an uploaded image's size, read from its header before it is decoded
SOCKET_TIMEOUT = 30.0  # seconds a client may take to send its request
DRAIN_LIMIT = 4 << 20  # bytes of a refused body read and dropped (see VizHandler._discard)
REFUSING_THREADS = 32  # connections over max_connections answered 503 at once; more are closed unanswered
REFUSAL_TIMEOUT = 2.0  # seconds such a connection may take
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png"}


class RequestError(Exception):
    """An error answered as JSON with this HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def plotly_js_path() -> Path:
    """The plotly.min.js bundled in the ``plotly`` wheel (served locally: the app never touches a CDN)."""
    try:
        import plotly
    except ImportError as exc:
        raise AttnlabError("attnlab viz needs plotly (its bundled plotly.min.js): pip install 'attnlab[viz]'") from exc
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise AttnlabError(f"the installed plotly {plotly.__version__} does not ship {path.name}; reinstall plotly")
    return path


class VizServer(ThreadingHTTPServer):
    """Holds the run list, the limits and a small cache of loaded (model, tokenizer) pairs."""

    daemon_threads = True
    request_queue_size = 256  # the listen backlog: a burst of connections waits instead of being refused

    def __init__(self, address: tuple[str, int], runs: list[str] | None = None, *, max_prompt_tokens: int = 256,
                 max_parameters: int = 200_000_000, max_new_tokens: int = 200, keep_models: int = 2,
                 allow_any_path: bool = False, max_connections: int = 256, busy_timeout: float = 60.0):
        super().__init__(address, VizHandler)
        self.runs = [str(r) for r in (runs or [])]
        self.roots = [Path(r).expanduser().resolve() for r in self.runs]
        self.allow_any_path = allow_any_path
        self.max_prompt_tokens, self.max_parameters = max_prompt_tokens, max_parameters
        self.max_new_tokens, self.keep_models = max_new_tokens, keep_models
        self.busy_timeout = busy_timeout
        self.plotly_js = plotly_js_path()
        self._static: dict[Path, bytes] = {}  # files served, read once (plotly.min.js is 4 MB)
        self._models: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()  # one forward pass at a time: models are not shared across threads
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refusals = threading.BoundedSemaphore(REFUSING_THREADS)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """A thread per connection, up to ``max_connections``; beyond, a short-lived thread answers 503 (up to
        ``REFUSING_THREADS`` at once), and beyond that the connection is closed unanswered."""
        if not self._slots.acquire(blocking=False):
            if self._refusals.acquire(blocking=False):
                threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
            else:
                self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Read the request's head, answer 503, and close once the client has read it (closing with its bytes
        unread would reset the connection and lose the answer); two seconds at most."""
        try:
            _answer_busy(request)
        finally:
            self.shutdown_request(request)
            self._refusals.release()

    def handle_error(self, request: socket.socket, client_address: Any) -> None:
        """A client that went away before its answer is no fault of the server: no traceback on its console;
        anything else in one line. The server keeps serving either way."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        print(f"attnlab viz: a request from {client_address[0]} failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    def static_bytes(self, path: Path) -> bytes:
        """A static file's bytes, read on first use and kept: a burst of page loads costs no extra memory."""
        if path not in self._static:
            self._static[path] = path.read_bytes()
        return self._static[path]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def limits(self) -> dict[str, int]:
        return {"max_prompt_tokens": self.max_prompt_tokens, "max_parameters": self.max_parameters,
                "max_new_tokens": self.max_new_tokens}

    def model(self, path: Any):
        """(model, tokenizer or image processor) for a run directory inside the server's runs; size-checked on the
        meta device before any weight is read."""
        import attnlab

        key = str(self.allowed_path(path))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        if not Path(key).is_dir():
            raise RequestError(400, f"cannot load model: {path} is not a directory")
        try:
            parameters = attnlab.info(run=key)["parameters"]
        except Exception as exc:  # noqa: BLE001 - anything wrong with the directory is the user's to fix
            raise RequestError(400, f"cannot load model from {path}: {_one_line(exc)}") from exc
        if parameters > self.max_parameters:
            raise RequestError(413, f"model {path} has {parameters:,} parameters; this server's limit is "
                                    f"{self.max_parameters:,} (attnlab viz --max-parameters)")
        try:
            model = _load_model(key)
            loaded = (model, analysis_kind(model).load_preprocessor(model, key))
        except Exception as exc:  # noqa: BLE001
            raise RequestError(400, f"cannot load model from {path}: {_one_line(exc)}") from exc
        self._models[key] = loaded
        while len(self._models) > self.keep_models:
            self._models.popitem(last=False)
        return loaded

    def allowed_path(self, path: Any) -> Path:
        """The resolved model path of a request, which must lie inside one of the server's runs (symbolic links
        resolved first, so a link cannot lead out) unless the server allows any path. Checked before the path
        is looked at, so a refusal says nothing about what exists outside."""
        if not isinstance(path, str) or not path.strip():
            raise RequestError(400, "no model given: pick a run or type the path of a model directory")
        if "\x00" in path or len(path) > 4096:
            raise RequestError(400, "the model path is not a valid path")
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise RequestError(400, f"the model path is not a valid path ({_one_line(exc)})") from exc
        inside = any(resolved == root or root in resolved.parents for root in self.roots)
        if not (inside or self.allow_any_path):
            raise RequestError(403, f"{path} is outside the runs this server was started with; start attnlab viz "
                                    "with it as an argument (or with --allow-any-path)")
        return resolved

    def check_prompt(self, tokenizer, prompt: Any, what: str = "prompt", *, required: bool = True) -> None:
        """A text field of a request: a string (non-empty if ``required``) of at most ``max_prompt_tokens``."""
        if prompt is None and not required:
            return
        if not isinstance(prompt, str) or (required and not prompt):
            raise RequestError(400, f"the {what} is empty" if required or prompt == "" else
                               f"the {what} must be a string, got {_shown(prompt)}")
        n = len(prompt) if len(prompt) > 16 * self.max_prompt_tokens else len(tokenizer(prompt).input_ids)
        if n > self.max_prompt_tokens:
            raise RequestError(413, f"the {what} is {n} tokens long; the limit is {self.max_prompt_tokens} tokens "
                                    "(attnlab viz --max-prompt-tokens)")

    def describe(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the page needs before an analysis: the model's kind and, for an image model, its image size,
        classes and the built-in sample images that fit it. Read from config.json alone (no weights)."""
        from ..loading import load_config
        from ..models.registry import model_kind_of_config

        key = self.allowed_path(body.get("model"))
        if not key.is_dir():
            raise RequestError(400, f"cannot load model: {body['model']} is not a directory")
        try:
            config = load_config(key, causal_only=False)
        except Exception as exc:  # noqa: BLE001
            raise RequestError(400, f"cannot load model from {body['model']}: {_one_line(exc)}") from exc
        model_kind = model_kind_of_config(config)
        kind = analysis_kind(model_kind.model_class)
        info: dict[str, Any] = {"model": body["model"], "kind": kind.name, "family": model_kind.name,
                                "generates": kind.generate is not None}
        if kind.name == "image":
            from .examples import example_set, examples

            height, width = config.image_sides
            chosen = example_set(config)
            items = examples(chosen.name) if chosen else ()
            info["image"] = {"height": height, "width": width, "channels": config.num_channels,
                             "patch_size": config.patch_size, "classes": config.num_labels}
            info["examples"] = {"source": chosen.name if items else None,
                                "items": [{"index": i, "caption": e.caption, "png": e.png()}
                                          for i, e in enumerate(items)]}
        return info

    def analyze(self, body: dict[str, Any]) -> dict[str, Any]:
        position, top_k = _int(body, "position", None), _int(body, "top_k", 10, low=1) or 10
        self.allowed_path(body.get("model"))  # refused before waiting for the model lock
        with self._busy():
            model, preprocessor = self.model(body.get("model"))
            kind = analysis_kind(model)
            result = _ANALYZE[kind.name](self, model, preprocessor, body, position, top_k)
        result["model"] = body["model"]
        return result

    def _analyze_text(self, model, tok, body: dict[str, Any], position: int | None, top_k: int) -> dict[str, Any]:
        self.check_prompt(tok, body.get("prompt"))
        return analysis_kind(model).analyze(model, tok, body["prompt"], position=position, top_k=top_k,
                                            max_tokens=self.max_prompt_tokens)

    def _analyze_seq2seq(self, model, tok, body: dict[str, Any], position: int | None, top_k: int) -> dict[str, Any]:
        self.check_prompt(tok, body.get("source"), "source")
        self.check_prompt(tok, body.get("target"), "target", required=False)
        return analysis_kind(model).analyze(model, tok, body["source"], body.get("target") or "", position=position,
                                            top_k=top_k, max_tokens=self.max_prompt_tokens)

    def _analyze_image(self, model, processor, body: dict[str, Any], position: int | None,
                       top_k: int) -> dict[str, Any]:
        image, example = body.get("image"), body.get("example")
        if (image is None) == (example is None):
            raise RequestError(400, "send an image (\"image\": a base64 PNG or JPEG) or pick a built-in one "
                                    "(\"example\": its index), one of the two")
        if example is not None:
            from .examples import example_set, examples

            chosen = example_set(model.config)
            items = examples(chosen.name) if chosen else ()
            if not items:
                height, width = model.config.image_sides
                raise RequestError(400, f"no built-in images fit this model ({height}×{width}, "
                                        f"{model.config.num_channels} channel(s)): upload an image")
            index = _int(body, "example", 0, low=0, high=len(items) - 1)
            picture, caption = items[index].pixels, items[index].caption
        else:
            picture, caption = decode_image(image), None
        result = analysis_kind(model).analyze(model, picture, processor=processor, top_k=top_k)
        result["example"] = caption
        return result

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        new = _int(body, "max_new_tokens", 40) or 40
        if not 0 < new <= self.max_new_tokens:
            raise RequestError(400, f"max_new_tokens must be between 1 and {self.max_new_tokens}")
        greedy, temperature = _flag(body, "greedy", True), _number(body, "temperature", 0.8)
        seed = _int(body, "seed", 0, low=0, high=2**32 - 1) or 0
        self.allowed_path(body.get("model"))
        with self._busy():
            model, tok = self.model(body.get("model"))
            kind = analysis_kind(model)
            if kind.generate is None:
                raise RequestError(400, f"a {kind.name} model generates nothing: analyse it instead")
            field = _TEXT_FIELD[kind.name]
            self.check_prompt(tok, body.get(field), field)
            return kind.generate(model, tok, body[field], max_new_tokens=new, greedy=greedy,
                                 temperature=temperature, seed=seed)

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """The model lock, waited for at most ``busy_timeout`` seconds: a queue of requests cannot grow without
        end behind a slow model."""
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise RequestError(503, f"the server is busy (another request held the model for {self.busy_timeout:g} s); "
                                    "try again")
        try:
            yield
        finally:
            self._lock.release()


_ANALYZE = {"causal_lm": VizServer._analyze_text, "seq2seq": VizServer._analyze_seq2seq,
            "image": VizServer._analyze_image}  # how each kind of model reads its request
_TEXT_FIELD = {"causal_lm": "prompt", "seq2seq": "source"}  # what a generating kind generates from


def _load_model(key: str):
    """A checked model of any attnlab kind, in eval mode: causal LMs through ``attnlab.load``, the others
    (sequence-to-sequence, vision) with the same checks of config.json and the weights' header first."""
    import attnlab

    from ..loading import check_weights, load_config
    from ..models.registry import model_kind_of_config

    config = load_config(key, causal_only=False)
    kind = model_kind_of_config(config)
    if analysis_kind(kind.model_class).name == "causal_lm":
        return attnlab.load(key, device="cpu")
    check_weights(key, config, kind)
    return kind.model_class.from_pretrained(key, config=config).eval()


def decode_image(value: Any):
    """A PIL image from a base64 PNG/JPEG (or a ``data:image/...;base64,`` URL): 400 when it is not one, 413 when
    its header claims more than ``MAX_IMAGE_PIXELS`` (checked before any pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str) or not value:
        raise RequestError(400, "image must be a base64 PNG or JPEG (or a data: URL of one)")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(400, "an image data: URL must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, "the image is not valid base64") from exc
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except Image.DecompressionBombError as exc:  # PIL's own limit, far above ours
        raise RequestError(413, f"the image is too large; the limit is {MAX_IMAGE_PIXELS:,} pixels") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise RequestError(400, "the image is not a PNG or JPEG (or it is damaged)") from exc
    if width * height > MAX_IMAGE_PIXELS:
        raise RequestError(413, f"the image is {width}×{height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(400, f"the image is damaged ({_one_line(exc)})") from exc
    return image


def _int(body: dict[str, Any], name: str, default: int | None, low: int = -(2**31), high: int = 2**31) -> int | None:
    """An integer option (numbers and numeric strings, as forms send them), within [low, high]."""
    value = body.get(name, default)
    if value is None or value == "":
        return default
    if isinstance(value, float) and not value.is_integer() or isinstance(value, (bool, list, dict)):
        raise RequestError(400, f"{name} must be an integer, got {_shown(value)}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(400, f"{name} must be an integer, got {_shown(value)}") from exc
    if not low <= number <= high:
        raise RequestError(400, f"{name} must be between {low} and {high}, got {number}")
    return number


def _number(body: dict[str, Any], name: str, default: float) -> float:
    """A positive, finite number option."""
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(400, f"{name} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except ValueError as exc:
        raise RequestError(400, f"{name} must be a number, got {_shown(value)}") from exc
    if not math.isfinite(number) or number <= 0:
        raise RequestError(400, f"{name} must be a positive number, got {_shown(value)}")
    return number


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(400, f"{name} must be true or false, got {_shown(value)}")
    return value


def _shown(value: Any, limit: int = 60) -> str:
    """A request value in an error message, cut short (a body may be 64 KB)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _answer_busy(request: socket.socket, limit: int = 64 << 10) -> None:
    """A 503 for a connection over the limit: its request head read first, its answer sent, then what else it
    sends (a body) read until it closes; bounded in bytes and time. A client that is gone gets nothing."""
    body = json.dumps({"error": "too many connections; try again"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    received = b""
    try:
        request.settimeout(REFUSAL_TIMEOUT)
        while b"\r\n\r\n" not in received and len(received) < limit and (chunk := request.recv(4096)):
            received += chunk
        request.sendall(head + body)
        request.shutdown(socket.SHUT_WR)
        while len(received) < limit and (chunk := request.recv(4096)):
            received += chunk
    except OSError:
        pass  # the client is gone or too slow: nothing more to do


class VizHandler(BaseHTTPRequestHandler):
    server: VizServer
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT  # a client that stops sending mid-request frees its thread

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: errors go to the page
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._file(STATIC / "index.html")
        if path == "/static/plotly.min.js":
            return self._file(self.server.plotly_js, cache=True)
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            target = STATIC / name
            if name in _static_names() and target.is_file():
                return self._file(target)
        if path == "/api/models":
            return self._json(200, {"models": self.server.runs, "limits": self.server.limits()})
        self._json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        routes = {"/api/analyze": self.server.analyze, "/api/generate": self.server.generate,
                  "/api/model": self.server.describe}
        route = routes.get(self.path.split("?", 1)[0])
        try:
            raw = self._body()
            if route is None:
                raise RequestError(404, f"no such endpoint: {self.path[:200]}")
            self._json(200, route(_json_object(raw)))
        except RequestError as exc:
            self._json(exc.status, {"error": str(exc)})
        except AttnlabError as exc:
            self._json(400, {"error": _one_line(exc)})
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            self._json(500, {"error": f"{type(exc).__name__}: {_one_line(exc)}"})

    def _body(self) -> bytes:
        """The request body, read only when its declared length is valid and within ``MAX_BODY``; otherwise
        the connection is closed after the answer, since the unread bytes cannot be told from a next request."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise RequestError(411, "send the body with a Content-Length, not chunked")
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not declared.isdigit():
            self.close_connection = True
            raise RequestError(400, f"Content-Length must be a whole number of bytes, got {declared[:40]!r}")
        length = int(declared)
        if length > MAX_BODY:
            self.close_connection = True
            self._discard(length)
            raise RequestError(413, f"request body of {length:,} bytes; the limit is {MAX_BODY:,}")
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise RequestError(400, f"the body ended after {len(raw):,} of {length:,} bytes")
        return raw

    def _discard(self, length: int) -> None:
        """Read and drop a refused body of up to ``DRAIN_LIMIT`` bytes, in small pieces, so that closing the
        connection does not reset it before the client has read the answer; a larger one is not read at all."""
        if length > DRAIN_LIMIT:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 64 << 10))
            if not chunk:
                return
            length -= len(chunk)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, headers too long, an unknown method) as JSON, with
        a status line even when the request line was too garbled to name an HTTP version."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        try:
            self._json(code, {"error": message or HTTPStatus(code).phrase})
        except OSError:
            pass  # the client is gone

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _file(self, path: Path, cache: bool = False) -> None:
        data = self.server.static_bytes(path)
        self._send(200, data, CONTENT_TYPES.get(path.suffix, "application/octet-stream"), cache)

    def _send(self, status: int, data: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (an empty body is an empty object)."""
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request is not JSON: {_one_line(exc)}") from exc
    except RecursionError as exc:
        raise RequestError(400, "the request is nested too deeply") from exc
    if not isinstance(body, dict):
        raise RequestError(400, "the request must be a JSON object")
    return body


def _static_names() -> frozenset[str]:
    """The files of the static folder, by name: nothing else is served under /static/."""
    return frozenset(p.name for p in STATIC.iterdir() if p.is_file())


def make_server(runs: list[str] | None = None, host: str = "127.0.0.1", port: int = 8765, **limits: Any) -> VizServer:
    """A bound, not yet serving server (port 0 picks a free port; see ``.url``); ``limits`` are ``VizServer``'s
    keyword options (``max_prompt_tokens``, ``keep_models``, ``allow_any_path``...)."""
    return VizServer((host, port), runs, **limits)


def serve(runs: list[str] | None = None, host: str = "127.0.0.1", port: int = 8765, **limits: Any) -> None:
    """Serve until interrupted."""
    server = make_server(runs, host, port, **limits)
    print(f"attnlab viz: serving on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
