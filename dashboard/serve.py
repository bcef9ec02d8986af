"""Run the dashboard as a Streamlit server (``lvlm-interpret serve`` calls :func:`serve`).

Streamlit is started as a subprocess of ``python -m streamlit`` rather than in-process, so the
CLI never imports Streamlit and the server gets its own clean interpreter. The launcher checks
the address first (one clear error instead of a server traceback), passes the allowed ``Host``
names (:mod:`dashboard.asgi` refuses every other), forwards SIGTERM/SIGINT/SIGHUP to the
server, and on Linux has the kernel stop the server if the launcher itself dies.

With a model (``serve --model``) a live-mode worker (``lvlm-interpret worker``) runs as a
second child beside the server: the model loads in that process, never in the dashboard's,
and the worker gets the same signals and is stopped with the server.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

APP = Path(__file__).with_name("asgi.py")  # app.py behind the Host check
REPO_ROOT = APP.parent.parent
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 10.0
_HOST_NAME = re.compile(
    r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?"
)


class ServeError(Exception):
    """An address or host name the server cannot use; the message says what to do."""


def check_address(host: str, port: int) -> None:
    """Fail now, with one line, where the server would fail to listen on ``host:port``."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port} is not a TCP port; use 1-65535.")
    if all(part.isdigit() for part in host.split(".")):  # looks numeric: must be an IPv4
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ServeError(f"--host {host!r} is not an IPv4 address.") from None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as error:
        raise ServeError(f"--host {host!r} is not an address of this machine ({error}).") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as error:
            raise ServeError(f"cannot listen on {host}:{port}: {error.strerror}.") from None


def check_store(store_dir: Path, db_url: str | None) -> None:
    """A store that exists opens (read-only) with this --db, and a path under a file is
    refused: otherwise the server starts and every page shows the error instead. A store
    that does not exist yet is served empty."""
    from store import StoreError, open_store

    if not store_dir.exists():
        existing = next(p for p in store_dir.absolute().parents if p.exists())
        if existing.is_dir():
            return
    try:
        open_store(store_dir, db_url).close()
    except StoreError as error:
        raise ServeError(" ".join(str(error).split())) from None


def allowed_hosts(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``Host`` header names the server answers: loopback names, ``host`` itself, ``extra``.

    Listening on every interface (0.0.0.0, ::) without ``extra`` accepts any name: the user
    opened the server up and did not say under which names it is reached.
    """
    names = [_host_name(name) for name in extra]
    if host in ANY_ADDRESS:
        return [*LOOPBACK_NAMES, *names] if names else ["*"]
    own = [] if host in LOOPBACK_NAMES else [_host_name(host)]
    return [*LOOPBACK_NAMES, *own, *names]


def _host_name(name: str) -> str:
    bare = name.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if bare == "*" or _HOST_NAME.fullmatch(bare):
        return bare
    raise ServeError(f"--allow-host {name!r} is not a host name (e.g. my-laptop.lan, *.lan).")


def command(
    store_dir: Path,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    headless: bool = True,
    hosts: Sequence[str] | None = None,
) -> list[str]:
    """The ``streamlit run`` command line; local-only (127.0.0.1) unless told otherwise.

    ``hosts``: allowed ``Host`` header names (default :func:`allowed_hosts` of ``host``).
    """
    hosts = allowed_hosts(host) if hosts is None else hosts
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
        *(arg for name in hosts for arg in ("--server.allowedHosts", name)),
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
    hosts: Sequence[str] | None = None,
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
        command(store_dir, db_url, host, port, headless, hosts),
        cwd=REPO_ROOT,
        env=environment,
        preexec_fn=_die_with_parent(),
        **popen_kwargs,
    )


def _die_with_parent() -> Callable[[], None] | None:
    """In the child: ask Linux to send SIGTERM when the launcher dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


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


def worker_command(
    store_dir: Path, db_url: str | None, model: str, device: str = "cpu"
) -> list[str]:
    """The ``lvlm-interpret worker`` command line for the worker beside the dashboard."""
    args = [sys.executable, "-m", "engine.cli", "worker", "--store", str(Path(store_dir))]
    args += ["--model", model, "--device", device]
    return [*args, "--db", db_url] if db_url else args


def start_worker(
    store_dir: Path, db_url: str | None, model: str, device: str = "cpu"
) -> subprocess.Popen:
    """The worker child (fixed argv, no shell); Linux stops it if the launcher dies."""
    return subprocess.Popen(
        worker_command(store_dir, db_url, model, device),
        cwd=REPO_ROOT,
        preexec_fn=_die_with_parent(),
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(
    store_dir: Path,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    headless: bool = True,
    allow_hosts: Sequence[str] = (),
    model: str | None = None,
    device: str = "cpu",
) -> int:
    """Serve until stopped; returns Streamlit's exit code. With ``model``, a worker answers
    the dashboard's live questions beside it.

    SIGTERM, SIGINT and SIGHUP are passed on to the server (and the worker), which shut
    down; a child that has not exited after :data:`STOP_GRACE_S` is killed, so neither the
    port nor the loaded model outlives us.
    """
    check_address(host, port)
    check_store(store_dir, db_url)
    hosts = allowed_hosts(host, allow_hosts)
    worker = start_worker(store_dir, db_url, model, device) if model else None
    process = start(store_dir, db_url, host, port, headless, hosts=hosts)
    children = [process] if worker is None else [process, worker]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for child in children:
            _stop(child)
