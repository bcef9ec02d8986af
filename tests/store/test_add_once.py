"""Adding a trace under an id that may be stored already: once, whoever races for it."""

from __future__ import annotations

import multiprocessing
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import pytest

from store import StoreError, Trace, TraceQuery, open_store


def test_add_new_stores_an_id_once(store, make_trace):
    trace = make_trace(seed=1)
    assert store.add_new(trace) is True
    assert store.add_new(make_trace(seed=2, trace_id=trace.info.trace_id)) is False
    with pytest.raises(StoreError, match="already in the store"):
        store.add(trace)
    assert store.query(TraceQuery()).total == 1
    with store.open(trace.info.trace_id) as stored:  # the first writer's file, untouched
        assert stored.info.prompt == trace.info.prompt
    assert store.verify() == [] and not list(store.layout.tmp_dir.iterdir())


def _race(directory: str, trace: Trace, start: Barrier, outcomes: Queue) -> None:
    with open_store(directory, writable=True) as opened:
        start.wait()
        try:
            outcomes.put(opened.add_new(trace))
        except StoreError as error:  # a writer between placing and indexing is in the way
            outcomes.put(str(error))


def test_writers_racing_on_one_id_store_it_once(store_dir, make_trace):
    """Every writer passes the 'stored?' check before any has indexed, so each one writes
    and places its file: a rename would let a loser replace the winner's file and then delete
    it when its index row is refused; placing by hard link makes the losers skip."""
    trace = make_trace(seed=3)
    writers = 4
    fork = multiprocessing.get_context("fork")
    start, outcomes = fork.Barrier(writers), fork.Queue()
    processes = [
        fork.Process(target=_race, args=(str(store_dir), trace, start, outcomes))
        for _ in range(writers)
    ]
    for process in processes:
        process.start()
    results = [outcomes.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert results.count(True) == 1, results
    assert all(r is False or r is True or "in the way" in r for r in results), results
    with open_store(store_dir) as opened:
        assert opened.query(TraceQuery()).total == 1
        assert opened.verify() == []
