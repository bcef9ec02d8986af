"""Run the dashboard as a Streamlit server (``lvlm-interpret serve`` calls :func:`serve`).

Streamlit is started as a subprocess of ``python -m streamlit`` rather than in-process, so the
CLI never imports Streamlit and the server gets its own clean interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

APP = Path(__file__).with_name("app.py")
REPO_ROOT = APP.parent.parent


def command(
    store_dir: Path,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    headless: bool = True,
) -> list[str]:
    """The ``streamlit run`` command line; local-only (127.0.0.1) unless told otherwise."""
    args = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true" if headless else "false",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--",
        "--store",
        str(Path(store_dir).resolve()),
    ]
    return [*args, "--db", db_url] if db_url else args


def start(
    store_dir: Path,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    headless: bool = True,
    env: Mapping[str, str] | None = None,
    **popen_kwargs: object,
) -> subprocess.Popen:
    """Start the server without waiting (tests and benchmarks stop it themselves).

    The repository root goes on ``PYTHONPATH`` because Streamlit puts only the script's own
    folder on ``sys.path``, and the app imports ``dashboard`` and ``store`` as packages.
    """
    environment = dict(os.environ if env is None else env)
    paths = [str(REPO_ROOT), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.Popen(  # fixed argv, no shell
        command(store_dir, db_url, host, port, headless),
        cwd=REPO_ROOT,
        env=environment,
        **popen_kwargs,
    )


def wait_ready(host: str, port: int, timeout: float = 60.0) -> None:
    """Block until the server answers its health check (tests and benchmarks need this)."""
    deadline = time.monotonic() + timeout
    url = f"http://{host}:{port}/_stcore/health"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # local URL only
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"dashboard did not start on {host}:{port} within {timeout:.0f}s")
        time.sleep(0.2)


def serve(
    store_dir: Path,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    headless: bool = True,
) -> int:
    """Serve until interrupted; returns Streamlit's exit code."""
    process = start(store_dir, db_url, host, port, headless)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
