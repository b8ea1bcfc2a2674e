"""A bounded loopback load test of ``attnlab viz``: this process starts the server on 127.0.0.1 (a free port),
sends it a fixed number of requests all at once — valid analyses and generations, page and model-list reads,
and abuse: malformed JSON, wrong types, oversized bodies, unknown routes, paths outside the runs — and checks
that every request got a well-formed answer (JSON with the expected status) while the server stayed up.

``python -m attnlab.viz.loadtest RUN [--requests 200]`` (or ``--model gpt:tiny``: a fresh model of that preset
with the byte tokenizer, in a temporary directory) prints the figures docs/viz.md reports. Traffic goes to the
loopback address only, and the count and each request's time are bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .server import MAX_BODY, VizServer, make_server


@dataclass(frozen=True)
class Probe:
    """One kind of request and the status a correct server answers it with."""

    kind: str
    method: str
    path: str
    body: bytes | None
    expected: int


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no HTTP answer at all (connection refused, reset, timed out)
    seconds: float
    well_formed: bool
    expected: bool


@dataclass
class Report:
    requests: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def unanswered(self) -> int:
        return sum(o.status is None for o in self.outcomes)

    @property
    def malformed(self) -> int:
        return sum(o.status is not None and not o.well_formed for o in self.outcomes)

    @property
    def unexpected(self) -> int:
        return sum(not o.expected for o in self.outcomes)

    @property
    def error_answers(self) -> int:
        return sum(o.status is not None and o.status >= 400 for o in self.outcomes)

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds (nearest rank)."""
        times = sorted(o.seconds for o in self.outcomes)
        return 1000 * times[min(len(times) - 1, max(0, round(q / 100 * len(times)) - 1))]

    def lines(self) -> list[str]:
        by_kind: dict[str, list[Outcome]] = {}
        for o in self.outcomes:
            by_kind.setdefault(o.kind, []).append(o)
        summary = (f"{len(self.outcomes)} requests in {self.seconds:.2f} s: {self.error_answers} answered with an "
                   f"error status (as intended), {self.unanswered} unanswered, {self.malformed} malformed, "
                   f"{self.unexpected} with another status than expected")
        latency = (f"latency p50 {self.percentile(50):.0f} ms, p99 {self.percentile(99):.0f} ms, "
                   f"max {1000 * max(o.seconds for o in self.outcomes):.0f} ms")
        rows = [summary, latency]
        for kind, outcomes in sorted(by_kind.items()):
            statuses = sorted({str(o.status) for o in outcomes})
            median = 1000 * statistics.median(o.seconds for o in outcomes)
            rows.append(f"  {kind:<16} {len(outcomes):>4} × status {'/'.join(statuses):<8} median {median:.0f} ms")
        return rows


def probes(model: str) -> list[Probe]:
    """The mix of requests, valid and abusive, each with the answer a correct server gives."""
    def post(kind: str, path: str, body: object, expected: int) -> Probe:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Probe(kind, "POST", path, data, expected)

    return [
        post("analyze", "/api/analyze", {"model": model, "prompt": "to be or not", "top_k": 3}, 200),
        post("generate", "/api/generate", {"model": model, "prompt": "to be", "max_new_tokens": 4}, 200),
        Probe("models", "GET", "/api/models", None, 200),
        post("malformed-json", "/api/analyze", b'{"model": "x", "prompt":', 400),
        post("wrong-types", "/api/analyze", {"model": ["a"], "prompt": 7}, 400),
        post("bad-number", "/api/generate", {"model": model, "prompt": "x", "temperature": "nan", "greedy": False},
             400),
        post("oversized", "/api/analyze", b"x" * (MAX_BODY + 1), 413),
        Probe("unknown-route", "GET", "/api/nothing-here", None, 404),
        post("outside-runs", "/api/analyze", {"model": "/etc", "prompt": "hi"}, 403),
        post("traversal", "/api/analyze", {"model": model + "/../../../etc", "prompt": "hi"}, 403),
    ]


def request(host: str, port: int, probe: Probe, timeout: float) -> Outcome:
    """Send one request on its own connection and judge the answer."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if probe.body is not None else {}
        connection.request(probe.method, probe.path, body=probe.body, headers=headers)
        response = connection.getresponse()
        status, data = response.status, response.read()
    except (OSError, http.client.HTTPException):
        return Outcome(probe.kind, None, time.perf_counter() - started, False, False)
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    well_formed = _well_formed(status, data)
    return Outcome(probe.kind, status, seconds, well_formed, status == probe.expected and well_formed)


def _well_formed(status: int, data: bytes) -> bool:
    """A JSON object; an error status carries a one-line ``error`` message."""
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    if not isinstance(payload, dict):
        return False
    if status >= 400:
        message = payload.get("error")
        return isinstance(message, str) and bool(message) and "\n" not in message
    return True


def run_load(server: VizServer, model: str, requests: int = 200, concurrency: int = 200,
             timeout: float = 60.0) -> Report:
    """``requests`` requests cycling through ``probes(model)``, ``concurrency`` at a time, all released together."""
    host, port = server.server_address[:2]
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"the load test only targets the loopback address, not {host}")
    mix = probes(model)
    plan = [mix[i % len(mix)] for i in range(requests)]
    start = threading.Barrier(min(concurrency, requests))

    def one(probe: Probe) -> Outcome:
        try:
            start.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            pass  # the last, smaller wave: go at once
        return request(host, port, probe, timeout)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(concurrency, requests)) as pool:
        outcomes = list(pool.map(one, plan))
    return Report(requests, time.perf_counter() - began, outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlab.viz.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a run or model directory to analyse (every analysis is a forward pass)")
    parser.add_argument("--model", metavar="FAMILY:PRESET", help="analyse a fresh model of this preset instead")
    parser.add_argument("--requests", type=int, default=200, help="requests in all (at most 2000)")
    parser.add_argument("--concurrency", type=int, default=200, help="requests in flight at once (at most 256)")
    args = parser.parse_args(argv)
    if not 0 < args.requests <= 2000 or not 0 < args.concurrency <= 256:
        parser.error("--requests must be 1..2000 and --concurrency 1..256")
    if (args.run is None) == (args.model is None):
        parser.error("give a RUN directory or --model FAMILY:PRESET")
    if args.model:
        with tempfile.TemporaryDirectory() as directory:
            return measure(fresh_model(args.model, Path(directory)), args.requests, args.concurrency)
    return measure(args.run, args.requests, args.concurrency)


def fresh_model(spec: str, directory: Path) -> str:
    """A model of ``family:preset`` with the byte tokenizer, saved in ``directory``."""
    import torch

    from .. import create_model
    from ..data import build_tokenizer

    family, _, preset = spec.partition(":")
    torch.manual_seed(0)
    create_model(family, preset or "tiny", vocab_size=257).save_pretrained(directory)
    build_tokenizer("byte").save_pretrained(directory)
    return str(directory)


def measure(run: str, requests: int, concurrency: int) -> int:
    """Serve ``run`` on the loopback address, load it with ``requests`` requests, print the figures; 0 when every
    request got the answer it should and the server still answers."""
    server = make_server([run], host="127.0.0.1", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        model = str(Path(run).resolve())
        run_load(server, model, requests=10, concurrency=1)  # warm-up: the model is loaded once, not timed
        before = _max_rss_mib()
        report = run_load(server, model, requests, concurrency)
        alive = request("127.0.0.1", server.server_address[1], probes(model)[2], 10.0).expected
    finally:
        server.shutdown()
        server.server_close()
    for line in report.lines():
        print(line)
    print(f"server still answering: {alive}; peak RSS {before:.0f} MiB before, {_max_rss_mib():.0f} MiB after; "
          f"models kept: {len(server._models)} (limit {server.keep_models})")
    return 0 if alive and report.unexpected == 0 else 1


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
