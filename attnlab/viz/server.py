"""The viz app's HTTP server: static page + a small JSON API over ``attnlab.analysis``.

Routes: ``GET /`` (the page), ``GET /static/<file>`` (app.js, app.css, plotly.min.js from the ``plotly``
package), ``GET /api/models``, ``POST /api/analyze`` and ``POST /api/generate`` (JSON bodies). Every error is a
JSON ``{"error": message}`` with a 4xx/5xx status; one request's failure (a bad path, a model that does not load,
an oversized prompt) never stops the server. Models are loaded on first use and a few are kept in memory.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import AttnlabError

STATIC = Path(__file__).with_name("static")
MAX_BODY = 1 << 20  # bytes of a request body
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

    def __init__(self, address: tuple[str, int], runs: list[str] | None = None, *, max_prompt_tokens: int = 256,
                 max_parameters: int = 200_000_000, max_new_tokens: int = 200, keep_models: int = 2):
        super().__init__(address, VizHandler)
        self.runs = [str(r) for r in (runs or [])]
        self.max_prompt_tokens, self.max_parameters = max_prompt_tokens, max_parameters
        self.max_new_tokens, self.keep_models = max_new_tokens, keep_models
        self.plotly_js = plotly_js_path()
        self._models: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()  # one forward pass at a time: models are not shared across threads

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def limits(self) -> dict[str, int]:
        return {"max_prompt_tokens": self.max_prompt_tokens, "max_parameters": self.max_parameters,
                "max_new_tokens": self.max_new_tokens}

    def model(self, path: str):
        """(model, tokenizer) for a run directory; size-checked on the meta device before any weight is read."""
        import attnlab

        if not path:
            raise RequestError(400, "no model given: pick a run or type the path of a model directory")
        key = str(Path(path).expanduser().resolve())
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        if not Path(key).is_dir():
            raise RequestError(400, f"cannot load model: {path} is not a directory")
        try:
            parameters = attnlab.info(run=key)["parameters"]
        except Exception as exc:  # noqa: BLE001 - anything wrong with the directory is the user's to fix
            raise RequestError(400, f"cannot load model from {path}: {exc}") from exc
        if parameters > self.max_parameters:
            raise RequestError(413, f"model {path} has {parameters:,} parameters; this server's limit is "
                                    f"{self.max_parameters:,} (attnlab viz --max-parameters)")
        try:
            loaded = (attnlab.load(key, device="cpu"), attnlab.load_tokenizer(key))
        except Exception as exc:  # noqa: BLE001
            raise RequestError(400, f"cannot load model from {path}: {exc}") from exc
        self._models[key] = loaded
        while len(self._models) > self.keep_models:
            self._models.popitem(last=False)
        return loaded

    def check_prompt(self, tokenizer, prompt: Any) -> None:
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(400, "the prompt is empty")
        n = len(prompt) if len(prompt) > 16 * self.max_prompt_tokens else len(tokenizer(prompt).input_ids)
        if n > self.max_prompt_tokens:
            raise RequestError(413, f"the prompt is {n} tokens long; the limit is {self.max_prompt_tokens} tokens "
                                    "(attnlab viz --max-prompt-tokens)")

    def analyze(self, body: dict[str, Any]) -> dict[str, Any]:
        from ..analysis import analyze

        with self._lock:
            model, tok = self.model(body.get("model", ""))
            self.check_prompt(tok, body.get("prompt"))
            result = analyze(model, tok, body["prompt"], position=_int(body, "position", None),
                             top_k=_int(body, "top_k", 10) or 10, max_tokens=self.max_prompt_tokens)
        result["model"] = body["model"]
        return result

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        from ..analysis import generate

        new = _int(body, "max_new_tokens", 40) or 40
        if not 0 < new <= self.max_new_tokens:
            raise RequestError(400, f"max_new_tokens must be between 1 and {self.max_new_tokens}")
        with self._lock:
            model, tok = self.model(body.get("model", ""))
            self.check_prompt(tok, body.get("prompt"))
            return generate(model, tok, body["prompt"], max_new_tokens=new, greedy=bool(body.get("greedy", True)),
                            temperature=float(body.get("temperature", 0.8)), seed=_int(body, "seed", 0) or 0)


def _int(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, f"{name} must be an integer, got {value!r}") from exc


class VizHandler(BaseHTTPRequestHandler):
    server: VizServer
    protocol_version = "HTTP/1.1"

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
            if "/" not in name and target.is_file():
                return self._file(target)
        if path == "/api/models":
            return self._json(200, {"models": self.server.runs, "limits": self.server.limits()})
        self._json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        routes = {"/api/analyze": self.server.analyze, "/api/generate": self.server.generate}
        route = routes.get(self.path.split("?", 1)[0])
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise RequestError(413, f"request body over {MAX_BODY} bytes")
            raw = self.rfile.read(length)
            if route is None:
                raise RequestError(404, f"no such endpoint: {self.path}")
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as exc:
                raise RequestError(400, f"the request is not JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise RequestError(400, "the request must be a JSON object")
            self._json(200, route(body))
        except RequestError as exc:
            self._json(exc.status, {"error": str(exc)})
        except AttnlabError as exc:
            self._json(400, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _file(self, path: Path, cache: bool = False) -> None:
        self._send(200, path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream"), cache)

    def _send(self, status: int, data: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        self.end_headers()
        self.wfile.write(data)


def make_server(runs: list[str] | None = None, host: str = "127.0.0.1", port: int = 8765, **limits: int) -> VizServer:
    """A bound, not yet serving server (port 0 picks a free port; see ``.url``)."""
    return VizServer((host, port), runs, **limits)


def serve(runs: list[str] | None = None, host: str = "127.0.0.1", port: int = 8765, **limits: int) -> None:
    """Serve until interrupted."""
    server = make_server(runs, host, port, **limits)
    print(f"attnlab viz: serving on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
