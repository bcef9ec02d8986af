"""``lvlm-interpret serve`` through the real console command and a real Streamlit server.

Bad addresses end with one line and exit code 2; the server answers only requests whose
``Host`` header names it (DNS rebinding); stopping or killing the launcher stops the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.serve import wait_ready
from store import open_store

LVLM = Path(sys.executable).with_name("lvlm-interpret")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [str(LVLM), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "store"
    open_store(path, writable=True).close()
    return path


def start_serve(store_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(LVLM), "serve", "--store", str(store_dir), "--port", str(port), *extra],
        env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready("127.0.0.1", port, timeout=120)
    except TimeoutError:
        process.kill()
        raise
    return process


def launcher_and_server(store_dir: Path) -> tuple[subprocess.Popen, int, int]:
    port = free_port()
    launcher = start_serve(store_dir, port)
    (server,) = children(launcher.pid)
    assert is_running(server)
    return launcher, server, port


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


BAD_ADDRESSES = {
    "port 99999": (["--port", "99999"], "not a TCP port"),
    "port -1": (["--port", "-1"], "not a TCP port"),
    "port 0": (["--port", "0"], "not a TCP port"),
    "host 999.1.1.1": (["--host", "999.1.1.1"], "not an IPv4 address"),
    "host 1.2.3": (["--host", "1.2.3"], "not an IPv4 address"),
    "host not on this machine": (["--host", "192.0.2.1"], "cannot listen"),
    "allow-host is a URL": (["--allow-host", "http://x/"], "not a host name"),
}


@pytest.mark.parametrize("case", [*BAD_ADDRESSES, "port in use"])
def test_bad_address_is_one_line(store_dir, case, request):
    if case == "port in use":
        args, fragment = ["--port", str(request.getfixturevalue("busy_port"))], "in use"
    else:
        args, fragment = BAD_ADDRESSES[case]
    result = cli("serve", "--store", str(store_dir), *args)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["a file", "under a file", "--db bogus", "another store's --db"])
def test_unusable_store_is_one_line(store_dir, tmp_path, case):
    """Refused before the server starts (it used to serve, every page showing the error)."""
    (tmp_path / "notes").write_text("mine")
    other = tmp_path / "other"
    open_store(other, writable=True).close()
    args = {
        "a file": ["--store", str(tmp_path / "notes")],
        "under a file": ["--store", str(tmp_path / "notes" / "x")],
        "--db bogus": ["--store", str(store_dir), "--db", "bogus"],
        "another store's --db": [
            "--store",
            str(store_dir),
            "--db",
            f"sqlite:///{other / 'index.sqlite'}",
        ],
    }[case]
    result = cli("serve", *args, "--port", str(free_port()), timeout=60)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert (tmp_path / "notes").read_text() == "mine"


def http_status(port: int, host: str, path: str = "/", websocket: bool = False) -> int:
    """The status code of one raw request with the given ``Host`` (and a same-host Origin)."""
    headers = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if websocket:
        headers[2:] = [
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            f"Origin: http://{host}",
        ]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.fixture(scope="module")
def server_port(store_dir) -> Iterator[int]:
    port = free_port()
    process = start_serve(store_dir, port, "--allow-host", "dash.lan")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=60)


ALLOWED = ["127.0.0.1", "localhost", "[::1]", "dash.lan", "LOCALHOST"]
FOREIGN = ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "dash.lan.evil"]


@pytest.mark.parametrize("name", ALLOWED)
def test_loopback_and_allowed_names_are_served(server_port, name):
    host = f"{name}:{server_port}"
    assert http_status(server_port, host) == 200
    assert http_status(server_port, host, "/_stcore/health") == 200
    assert http_status(server_port, host, "/_stcore/stream", websocket=True) == 101


@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_host_is_refused(server_port, name):
    """DNS rebinding: a foreign name resolved to 127.0.0.1, with a matching Origin."""
    for host in (name, f"{name}:{server_port}"):
        assert http_status(server_port, host) == 403
        assert http_status(server_port, host, "/_stcore/health") == 403
        assert http_status(server_port, host, "/_stcore/stream", websocket=True) == 403


def test_sigterm_stops_the_server_and_frees_the_port(store_dir):
    launcher, server, port = launcher_and_server(store_dir)
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=60)
    assert wait_until(lambda: not is_running(server)), "the Streamlit child outlived serve"
    assert wait_until(lambda: port_is_free(port))


def test_killed_launcher_takes_the_server_down(store_dir):
    """SIGKILL cannot be forwarded: the kernel's parent-death signal stops the server."""
    launcher, server, port = launcher_and_server(store_dir)
    launcher.kill()
    launcher.wait(timeout=60)
    assert wait_until(lambda: not is_running(server)), "the Streamlit child outlived serve"
    assert wait_until(lambda: port_is_free(port))
