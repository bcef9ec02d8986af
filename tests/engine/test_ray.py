"""record-dataset --ray: the demo model on a real local Ray cluster, rows stored exactly once.

Ray's start-up costs tens of seconds on a busy 2-core machine, so the module starts two
clusters in all: the killed-worker test runs the real console command with ``--ray local``
(which starts and ends its own cluster), the others share one cluster started here in-process
(``--ray auto`` then records on the cluster this process is connected to).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.demo.world import write_manifest
from store import StoreError, TraceQuery, open_store
from tests.engine.test_cli_hostile import LVLM

pytestmark = pytest.mark.slow
runner = CliRunner()
RECORDER = "MapWorker(Map(_Recorder))"  # the recording actors' process title


def _args(manifest: Path, checkpoint: Path, store: Path, *more: str) -> list[str]:
    return [
        "record-dataset",
        str(manifest),
        "--model",
        str(checkpoint),
        "--store",
        str(store),
        "--no-relevancy",
        *more,
    ]


def _count(store: Path, db: str | None = None) -> int:
    try:
        with open_store(store, db) as opened:
            return opened.query(TraceQuery()).total
    except StoreError:  # not created yet, or being created
        return 0


def _stored_questions(store: Path, db: str | None = None) -> list[tuple[str, str]]:
    with open_store(store, db) as opened:
        assert opened.verify() == []  # every file indexed, no temp file, checksums right
        return sorted((i.image_name, i.prompt) for i in opened.query(TraceQuery()).items)


def _manifest_questions(manifest: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return sorted((r["image"], r["prompt"]) for r in rows)


def _ray_processes(root: psutil.Process) -> list[psutil.Process]:
    """Ray's processes under ``root`` (its GCS server, raylet, agents and workers)."""
    return [child for child in root.children(recursive=True) if "ray" in _title(child)]


def _all_gone(processes: list[psutil.Process], timeout: float = 60) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def test_a_killed_worker_loses_nothing_and_nothing_is_left_running(
    tmp_path, demo_checkpoint, fresh_postgres_url
):
    """The console command starts its own cluster (--ray local) and indexes into PostgreSQL;
    one recording actor is killed with SIGKILL mid-run: Ray restarts it and retries its rows,
    every row is stored once, and every process the cluster ran is gone when the command
    ends."""
    manifest = write_manifest(tmp_path / "m", count=12, seed=13)
    store, db = tmp_path / "store", fresh_postgres_url
    args = _args(manifest, demo_checkpoint, store, "--db", db, "--ray", "local")
    args += ["--ray-workers", "2"]
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen(
        [str(LVLM), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    command = psutil.Process(run.pid)
    seen: dict[int, psutil.Process] = {}
    killed, stored_then = None, None
    deadline = time.monotonic() + 420
    while run.poll() is None and time.monotonic() < deadline:
        for process in _ray_processes(command):
            seen.setdefault(process.pid, process)
        if killed is None and (stored_then := _count(store, db)) > 0:
            recorders = [p for p in seen.values() if _title(p).startswith(f"ray::{RECORDER}")]
            if recorders:
                killed = recorders[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    _, err = run.communicate(timeout=60)
    text = err.decode()
    assert run.returncode == 0, text
    assert killed is not None and stored_then < 12, text  # killed while rows were left
    assert "recorded 12, already stored 0, failed 0, invalid rows 0" in text
    assert _stored_questions(store, db) == _manifest_questions(manifest)  # each row once
    assert _all_gone(list(seen.values())) == []


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.parametrize(
    ("more", "fragment"),
    [
        (["--ray", "head.example"], "is not a Ray address"),
        (["--ray", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--ray", "ray://127.0.0.1:1"], "cannot reach a Ray cluster at ray://127.0.0.1:1"),
        (["--ray", "auto"], "cannot connect to Ray at auto"),  # none running here
        (["--ray", "local", "--ray-workers", "0"], "--ray-workers must be at least 1"),
        (["--ray", "local", "--ray-cpus", "nan"], "--ray-cpus must be a positive number"),
        (["--ray", "local", "--device", "cuda:1"], "Ray gives each worker its GPU"),
    ],
)
def test_mistakes_are_one_line_before_anything(tmp_path, demo_checkpoint, more, fragment):
    """Caught before a model loads and before the store is created (these run before the
    module's cluster starts: a process connected to Ray records on that cluster)."""
    manifest = write_manifest(tmp_path / "m", count=1, seed=3)
    result = runner.invoke(app, _args(manifest, demo_checkpoint, tmp_path / "store", *more))
    _assert_one_line(result, fragment)
    assert not (tmp_path / "store").exists()


def test_without_ray_installed_the_error_says_how_to_install_it(
    tmp_path, demo_checkpoint, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    manifest = write_manifest(tmp_path / "m", count=1, seed=3)
    args = _args(manifest, demo_checkpoint, tmp_path / "store", "--ray", "local")
    _assert_one_line(runner.invoke(app, args), "pip install 'lvlm-interpret[ray]'")


def test_a_ray_client_address_needs_ray_client(tmp_path, demo_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)  # Ray installed without its client extra
    manifest = write_manifest(tmp_path / "m", count=1, seed=3)
    with socket.create_server(("127.0.0.1", 0)) as server:  # an address that answers
        address = f"ray://127.0.0.1:{server.getsockname()[1]}"
        args = _args(manifest, demo_checkpoint, tmp_path / "store", "--ray", address)
        _assert_one_line(runner.invoke(app, args), "pip install 'ray[client]'")


def _assert_one_line(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def cluster():
    """One small local cluster for the module, in this process; shut down after, with every
    process it started."""
    import ray

    ray.init(
        address="local",
        num_cpus=3,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    me = psutil.Process()
    try:
        yield
    finally:
        started = _ray_processes(me)
        ray.shutdown()
    assert _all_gone(started) == []


def test_rows_arrive_once_with_the_one_process_ids(cluster, tmp_path, demo_checkpoint):
    """Ray and the one-process run store the same traces under the same ids, report a bad row
    the same way without stopping, and a re-run on Ray records nothing new."""
    manifest = write_manifest(tmp_path / "m", count=10, seed=11)
    row = json.loads(manifest.read_text().splitlines()[0])
    whole = (manifest.parent / row["image"]).read_bytes()
    (manifest.parent / "cut.png").write_bytes(whole[: len(whole) // 2])  # header reads, body not
    with manifest.open("a") as extra:
        extra.write('{"image": "cut.png", "prompt": "Colour?"}\n')
    one = runner.invoke(app, _args(manifest, demo_checkpoint, tmp_path / "one"))
    on_ray = [*_args(manifest, demo_checkpoint, tmp_path / "ray"), "--ray"]
    assert runner.invoke(app, on_ray).exit_code == 2  # --ray needs its ADDRESS
    on_ray += ["auto", "--ray-workers", "2"]
    first = runner.invoke(app, on_ray)
    summary = "recorded 10, already stored 0, failed 1, invalid rows 0"
    failure = "line 11: failed: cut.png is not a readable image"
    for result in (one, first):
        assert result.exit_code == 1, result.output
        assert summary in result.stderr and failure in result.stderr
    with open_store(tmp_path / "one") as a, open_store(tmp_path / "ray") as b:
        ids = {i.trace_id for i in a.query(TraceQuery()).items}
        assert len(ids) == 10
        assert {i.trace_id for i in b.query(TraceQuery()).items} == ids
    assert _stored_questions(tmp_path / "ray") == _stored_questions(tmp_path / "one")
    again = runner.invoke(app, [*on_ray[:-1], "1"])  # one worker is enough to skip
    assert "recorded 0, already stored 10, failed 1, invalid rows 0" in again.stderr
    assert _count(tmp_path / "ray") == 10
