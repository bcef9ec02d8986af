"""A report printed to PDF by headless Chromium (Playwright), never touching the network.

Optional: it needs the ``playwright`` package and a Chromium binary (Debian's
``/usr/bin/chromium``, or ``$LVLM_INTERPRET_CHROMIUM``); :func:`pdf_unavailable` says in
one line what is missing, so a command can refuse before building anything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

CHROMIUM_ENV = "LVLM_INTERPRET_CHROMIUM"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium() -> str | None:
    """The Chromium binary to print with, if any."""
    asked = os.environ.get(CHROMIUM_ENV)
    if asked:
        return asked if Path(asked).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def pdf_unavailable() -> str | None:
    """Why no PDF can be printed here (one line), or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "PDF output needs the playwright package (pip install playwright)"
    if chromium() is None:
        return (
            "PDF output needs Chromium: install Debian's chromium (apt-get install chromium) "
            f"or set {CHROMIUM_ENV} to a Chromium binary"
        )
    return None


def write_pdf(html: str, path: Path) -> None:
    """Print ``html`` to ``path`` (A4, backgrounds kept). Every request the page might make
    is aborted: the report is self-contained, so nothing is lost."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.abort())
            page.set_content(html, wait_until="load")
            page.pdf(path=str(path), format="A4", print_background=True, margin=_MARGIN)
        finally:
            browser.close()


_MARGIN = {"top": "12mm", "bottom": "12mm", "left": "10mm", "right": "10mm"}
