"""Screenshots of the app for given models, in headless Chromium driven by Playwright (the README's images).

``python -m attnlab.viz.screenshots OUT_DIR RUN [RUN ...]`` writes ``OUT_DIR/<run name>.png``. Needs
Debian's chromium and the playwright package (``scripts/install-browser.sh``); Playwright's own browser
download is never used.
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
                explore(page, server.url, run, shot, prompt)
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
