"""The index on a real PostgreSQL server (scripts/postgres.sh), beside the default SQLite.

Tests taking ``db_url`` run on both: None is the store's own SQLite index, the other a fresh
database on the session's PostgreSQL server.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from store import TraceQuery, open_store
from store import _h5 as h5_module
from store._store import checksum_file


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str | None:
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("fresh_postgres_url")


def test_staging_dir_keeps_hdf5_writes_off_the_store(store_dir, tmp_path, make_trace, db_url):
    """With staging_dir, HDF5 writes only there (every file it writes is recorded by a spy
    around the real writer); the store receives a byte copy, placed and indexed as usual."""
    staging = tmp_path / "local-disk"
    written: list[Path] = []
    real_write = h5_module.write_trace

    def spy(fd, *args, **kwargs):
        written.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real_write(fd, *args, **kwargs)

    trace = make_trace(seed=5)
    with open_store(store_dir, db_url=db_url, writable=True) as st:
        h5_module.write_trace = spy
        try:
            assert st.add_new(trace, staging_dir=staging) is True
            assert st.add_new(trace, staging_dir=staging) is False  # stored: nothing written
        finally:
            h5_module.write_trace = real_write
        tid = trace.info.trace_id
        assert len(written) == 1 and written[0].parent == staging
        assert list(staging.iterdir()) == [] and list(st.layout.tmp_dir.iterdir()) == []
        path = st.layout.trace_path(tid)
        record = {r.trace_id: r for r in st._index.file_records()}[tid]
        assert record.file_checksum == checksum_file(path)
        assert record.file_size == path.stat().st_size
        with st.open(tid) as stored:
            assert (stored.read().lm_attention == trace.lm_attention).all()
        assert st.verify() == []


def _race(directory: str, url: str | None, trace, start: Barrier, outcomes: Queue) -> None:
    with open_store(directory, db_url=url, writable=True) as opened:
        start.wait()
        try:
            outcomes.put(opened.add_new(trace))
        except Exception as error:  # reported to the test, which fails on it
            outcomes.put(f"{type(error).__name__}: {error}")


def test_two_processes_adding_one_trace_id(store_dir, make_trace, db_url):
    """Two real processes add the same trace id at the same moment, three times over: each
    time exactly one returns True and the other False, one file, one row."""
    with open_store(store_dir, db_url=db_url, writable=True):
        pass  # created (and bound) before the race, as a recording job's store would be
    spawn = multiprocessing.get_context("spawn")
    for seed in range(3):
        trace = make_trace(seed=10 + seed)
        start, outcomes = spawn.Barrier(2), spawn.Queue()
        processes = [
            spawn.Process(target=_race, args=(str(store_dir), db_url, trace, start, outcomes))
            for _ in range(2)
        ]
        for process in processes:
            process.start()
        results = sorted(outcomes.get(timeout=120) for _ in processes)
        for process in processes:
            process.join(timeout=60)
        assert results == [False, True], results
    with open_store(store_dir, db_url=db_url) as opened:
        assert opened.query(TraceQuery()).total == 3
        assert len([t for t, _ in opened.layout.trace_files()]) == 3
        assert opened.verify() == []
