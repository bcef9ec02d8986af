"""Crash, concurrency and bad-environment tests with real processes."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from store import StoreReadOnly, open_store

from . import _workers
from .conftest import REPO

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}


def _worker(*args: object, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.store._workers", *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True, **kw)


def _assert_consistent(directory: Path) -> int:
    """Every visible trace is complete and readable; only gc-able leftovers are allowed."""
    with open_store(directory, writable=True) as st:
        problems = st.verify()
        assert {p.kind for p in problems} <= {"orphan_file", "temp_leftover"}, problems
        page = st.query()
        for info in page.items:
            with st.open(info.trace_id) as tr:
                tr.read()
        st.gc()
        assert st.verify() == []
        return page.total


@pytest.mark.slow
def test_sigkill_during_add_never_leaves_half_a_trace(tmp_path):
    # Forked writers start at once (no interpreter start-up), so the random delays land
    # all over an add: encoding, the temp write, fsync, rename, the index commit.
    directory = tmp_path / "store"
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    seen = 0
    for _ in range(24):
        proc = fork.Process(target=_workers.writer, args=(str(directory), -1, 6), daemon=True)
        proc.start()
        time.sleep(rng.uniform(0.02, 0.5))  # one add takes ~0.05-0.2 s
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        seen = _assert_consistent(directory)
    assert seen > 0, "the writer never finished a trace: kill points too early"


@pytest.mark.slow
def test_a_forked_child_writes_after_its_parent_wrote(tmp_path, make_trace):
    """A child forked from a process that had written traces writes its own (c-blosc2's
    compression threads do not survive a fork; a child once hung in its first add)."""
    directory = tmp_path / "store"
    fork = multiprocessing.get_context("fork")
    with open_store(directory, writable=True) as st:
        for seed in range(10):
            st.add(make_trace(seed=seed))
            child = fork.Process(target=_workers.writer, args=(str(directory), 1, 4))
            child.start()
            child.join(timeout=30)
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
            assert child.exitcode == 0, f"child {seed} hung or failed"
    assert _assert_consistent(directory) == 20


def test_one_writer_several_readers(tmp_path):
    directory = tmp_path / "store"
    first = _worker("writer", directory, 2, 3)
    first.wait(timeout=60)
    writer = _worker("writer", directory, 25, 3)
    readers = [_worker("reader", directory, 6) for _ in range(3)]
    assert writer.wait(timeout=120) == 0
    for r in readers:
        out, _ = r.communicate(timeout=60)
        assert r.returncode == 0, out
        assert int(out.split()[-1]) > 0
    assert _assert_consistent(directory) == 27


def test_full_disk_adds_nothing_and_loses_nothing(store_dir, make_trace):
    with open_store(store_dir, writable=True) as st:
        kept = st.add(make_trace())
    before = sorted(p.name for p in store_dir.rglob("*"))
    proc = _worker("fill_disk", store_dir, 1_000_000)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "StoreFull" in out and "Free space" in out, out
    with open_store(store_dir, writable=True) as st:
        assert [i.trace_id for i in st.query().items] == [kept]
        assert st.verify() == []
    assert sorted(p.name for p in store_dir.rglob("*")) == before


@contextmanager
def _read_only_view(tmp_path: Path) -> Iterator[Path]:
    """A read-only view of a directory: a read-only bind mount as root (root ignores
    permission bits), plain permissions otherwise."""
    src, view = tmp_path / "src", tmp_path / "ro"
    view.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "--bind", "-o", "ro", src, view], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
        try:
            yield view
        finally:
            subprocess.run(["umount", view], check=True)
    else:
        view.rmdir()
        src.rename(view)
        for path in [view, *view.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield view
        finally:
            for path in [view, *view.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)


def test_read_only_directory(tmp_path, make_trace):
    with open_store(tmp_path / "src", writable=True) as st:
        tid = st.add(make_trace())
    with _read_only_view(tmp_path) as view:
        with pytest.raises(StoreReadOnly, match="mode 'r'"):
            open_store(view, writable=True)
        with open_store(view) as st:
            assert st.query().total == 1 and st.verify() == []
            with st.open(tid) as tr:
                assert tr.attention(0, 0).shape == (46, 46)
            with pytest.raises(StoreReadOnly):
                st.tag(tid, "x")
