"""Screenshots of the app for given models, in headless Chromium driven by Playwright (the README's images).

``python -m attnlab.viz.screenshots OUT_DIR RUN [RUN ...]`` writes ``OUT_DIR/<run name>.png``: a causal LM
analyses a prompt (4th token selected), a sequence-to-sequence model a source and target prefix (2nd target token
selected), an image model its first built-in sample image. Needs Debian's chromium and the playwright package
(``scripts/install-browser.sh``); Playwright's own browser download is never used.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

from .server import make_server

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
DEFAULT_PROMPT = "ROMEO: But soft, what light"
DEFAULT_SOURCE, DEFAULT_TARGET = "relations", "snoit"  # a word, and the start of its reversal


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def explore(page, url: str, model: str, screenshot: Path, prompt: str = DEFAULT_PROMPT) -> None:
    """Analyze ``prompt`` with ``model`` in the page, pick the 4th token, and save a full-page screenshot."""
    page.goto(url)
    page.fill("#model", model)
    page.fill("#prompt", prompt)
    page.click("#analyze")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.click("#tokens .tok >> nth=3")
    page.wait_for_selector("#topk .main-svg")
    page.screenshot(path=str(screenshot), full_page=True)


def choose_model(page, url: str, model: str, ready: str) -> None:
    """Open the page, name ``model`` and wait until the page shows that model's inputs (``ready``, a selector)."""
    page.goto(url)
    page.fill("#model", model)
    page.dispatch_event("#model", "change")
    page.wait_for_selector(ready, timeout=60_000)


def explore_seq2seq(page, url: str, model: str, screenshot: Path, source: str = DEFAULT_SOURCE,
                    target: str = DEFAULT_TARGET) -> None:
    """Analyze a source and target prefix with a sequence-to-sequence model, pick the 2nd target token, save."""
    choose_model(page, url, model, "#target-row:not([hidden])")
    page.fill("#prompt", source)
    page.fill("#target", target)
    page.click("#analyze")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.click("#target-tokens .tok >> nth=1")
    page.wait_for_selector("#s2s-topk .main-svg")
    page.screenshot(path=str(screenshot), full_page=True)


def explore_image(page, url: str, model: str, screenshot: Path, example: int = 0) -> None:
    """Analyze one of the built-in sample images with an image model, and save a full-page screenshot."""
    choose_model(page, url, model, f'#examples[data-model="{model}"] button')
    page.click(f"#examples button >> nth={example}")
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    page.wait_for_selector("#patch-maps .main-svg")
    page.screenshot(path=str(screenshot), full_page=True)


def _explorer(run: str):
    """How to screenshot ``run``: by the kind of model its config names."""
    from ..analysis import analysis_kind
    from ..loading import load_config
    from ..models.registry import model_kind_of_config

    kind = analysis_kind(model_kind_of_config(load_config(run, causal_only=False)).model_class).name
    return {"seq2seq": explore_seq2seq, "image": explore_image}.get(kind)


def take(out_dir: str | Path, runs: list[str], prompt: str = DEFAULT_PROMPT) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("no chromium on PATH: run scripts/install-browser.sh")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    server = make_server(runs, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shots = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for run in runs:
                shot = out_dir / f"{Path(run).name}.png"
                other = _explorer(run)
                if other is None:
                    explore(page, server.url, run, shot, prompt)
                else:
                    other(page, server.url, run, shot)
                shots.append(shot)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return shots


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    for path in take(sys.argv[1], sys.argv[2:]):
        print(path)
