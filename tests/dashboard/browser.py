"""Real server + headless Chromium, shared by the browser tests and the benchmark."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from dashboard import serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_dashboard(store_dir: Path) -> Iterator[str]:
    """The real ``streamlit run`` server on a free local port; yields its base URL."""
    port = free_port()
    process = serve.start(store_dir, port=port)
    try:
        serve.wait_ready("127.0.0.1", port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


# The test session's one Chromium (``shared_chromium``), while it runs; None otherwise.
_shared: Browser | None = None


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium: the test session's shared one where it runs (a launch costs
    seconds on 2 busy cores, and Playwright's sync API allows one driver per thread), else
    a browser of its own. Callers isolate themselves with a new context, never close it."""
    if _shared is not None:
        yield _shared
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def shared_chromium() -> Iterator[Browser]:
    """Launch one Chromium that every ``chromium()`` inside this block returns."""
    global _shared
    with chromium() as browser:
        _shared = browser
        try:
            yield browser
        finally:
            _shared = None
