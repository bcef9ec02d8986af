"""Hostile review of the method layer's commands (analyse, record --metrics, sanity-check,
store gc-uploads / reindex): bad input is one line, exit 2, and the store byte-identical."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The real command in a process of its own (tracebacks would reach stderr)."""
    run = [sys.executable, "-m", "engine.cli", *args]
    return subprocess.run(run, capture_output=True, text=True, cwd=REPO, check=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_refusal(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.fixture
def empty_store(tmp_path) -> Path:
    from store import open_store

    path = tmp_path / "store"
    open_store(path, writable=True).close()
    return path


@pytest.mark.parametrize("days", ["inf"])
def test_gc_uploads_refuses_an_infinite_age_in_one_line(empty_store, days):
    # inf passed min=0 and overflowed datetime.timedelta: a 34-line traceback, exit 1
    before = _hashes(empty_store)
    _one_line_refusal(
        _cli("store", "gc-uploads", "--store", str(empty_store), "--older-than-days", days)
    )
    assert _hashes(empty_store) == before


@pytest.fixture
def synthetic_store(tmp_path) -> tuple[Path, str]:
    """A store with one synthetic trace (stored relevancy: evidence has maps to weigh)."""
    from store import open_store
    from store.synthetic import make_synthetic_trace

    path = tmp_path / "store"
    with open_store(path, writable=True) as store:
        trace_id = store.add(make_synthetic_trace(seed=1, grid=(4, 6)))
    return path, trace_id


def test_a_damaged_result_row_is_one_line_naming_it_and_reindex_keeps_it(synthetic_store):
    # a results row not JSON (edited by hand): analyse, the report and every page listing the
    # trace's results raised json's JSONDecodeError (a traceback on the Faithfulness page)
    import sqlite3

    from store import StoreError, open_store, reindex_store

    path, trace_id = synthetic_store
    with open_store(path, writable=True) as store:
        store.put_result(trace_id, "faithfulness", "deletion@1/abc", {"method": "deletion"})
    conn = sqlite3.connect(path / "index.sqlite")
    with conn:
        conn.execute("UPDATE trace_results SET payload = '{broken'")
    conn.close()  # its WAL folded back: the hashes below see the store as analyse finds it
    before = _hashes(path)
    result = _cli("analyse", "--store", str(path), "--metrics", "evidence", trace_id)
    _one_line_refusal(result)
    assert "faithfulness/deletion@1/abc" in result.stderr and trace_id in result.stderr
    assert _hashes(path) == before
    with open_store(path) as store, pytest.raises(StoreError, match="unreadable"):
        store.get_result(trace_id, "faithfulness", "deletion@1/abc")
    reindex_store(path)  # the damaged row is carried over, not dropped
    with sqlite3.connect(path / "index.sqlite") as conn:
        assert conn.execute("SELECT payload FROM trace_results").fetchall() == [("{broken",)]


def test_stored_maps_skip_a_version_int_cannot_read(synthetic_store):
    # '²'.isdigit() is True and int('²') raised: one such payload broke every map reader
    from methods.maps import MAPS_KIND, stored_maps
    from store import open_store

    path, trace_id = synthetic_store
    with open_store(path, writable=True) as store:
        good = {"method": "occlusion", "version": "2", "per_token": {"map": [[0.5, 0.25]]}}
        store.put_result(trace_id, MAPS_KIND, "occlusion@2/a", good)
        odd = {"method": "occlusion", "version": "²", "per_token": {"map": [[1.0, 0.0]]}}
        store.put_result(trace_id, MAPS_KIND, "occlusion@x/b", odd)
        assert stored_maps(store, trace_id)["occlusion"].tolist() == [[0.5, 0.25]]


def test_two_writers_of_one_result_and_metric_both_succeed(tmp_path, index_url):
    # two `analyse` runs on one trace: put_result and set_metrics deleted then inserted, so
    # on PostgreSQL both writers passed the delete and one failed on the primary key
    import threading

    from store import open_store
    from store.synthetic import make_synthetic_trace

    path = tmp_path / "store"
    with open_store(path, writable=True, db_url=index_url) as store:
        trace_id = store.add(make_synthetic_trace(seed=1))
    stores = [open_store(path, writable=True, db_url=index_url) for _ in range(4)]
    errors: list[Exception] = []

    def write(store, writer: int) -> None:
        for n in range(25):
            try:
                store.put_result(trace_id, "faithfulness", "deletion@1/x", {"n": n, "w": writer})
                store.set_metrics(trace_id, {"agreement": n / 25})
            except Exception as error:  # every failure is the finding
                errors.append(error)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert stores[0].list_results(trace_id, "faithfulness")["deletion@1/x"]["n"] == 24
        assert stores[0].get(trace_id).metrics["agreement"] == 24 / 25
    finally:
        for store in stores:
            store.close()
