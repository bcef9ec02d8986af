"""The index on a real PostgreSQL server (scripts/postgres.sh), beside the default SQLite.

Tests taking ``index_url`` (tests/conftest.py) run on both: None is the store's own SQLite
index, the other a fresh database on the session's PostgreSQL server. The existing API tests
imported below run here again, unchanged, on a store indexed in PostgreSQL (this module's
``store`` fixture replaces the SQLite one).
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from typer.testing import CliRunner

from store import TraceQuery, open_store, reindex_store
from store import _h5 as h5_module
from store._store import checksum_file
from store.cli import app
from tests.store.test_notes import test_notes_round_trip_and_search  # noqa: F401
from tests.store.test_store import (  # noqa: F401
    filled,
    test_answer_tokens_come_from_the_token_table,
    test_delete_and_add_errors,
    test_edit_tags_metrics_models,
    test_export,
    test_filters,
    test_order_and_pages,
    test_results_table,
    test_values_round_trip_through_the_index,
    test_verify_finds_each_kind_of_damage_and_gc_cleans,
)


@pytest.fixture
def store(store_dir, fresh_postgres_url):
    """The store the imported tests use, its index in PostgreSQL."""
    with open_store(store_dir, db_url=fresh_postgres_url, writable=True) as opened:
        assert opened._index.engine.dialect.name == "postgresql" and not opened._index.has_fts
        yield opened


def test_staging_dir_keeps_hdf5_writes_off_the_store(store_dir, tmp_path, make_trace, index_url):
    """With staging_dir, HDF5 writes only there (every file it writes is recorded by a spy
    around the real writer); the store receives a byte copy, placed and indexed as usual."""
    staging = tmp_path / "local-disk"
    written: list[Path] = []
    real_write = h5_module.write_trace

    def spy(fd, *args, **kwargs):
        written.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real_write(fd, *args, **kwargs)

    trace = make_trace(seed=5)
    with open_store(store_dir, db_url=index_url, writable=True) as st:
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


def _race(directory: str, url: str | None, traces, start: Barrier, outcomes: Queue) -> None:
    with open_store(directory, db_url=url, writable=True) as opened:
        for trace in traces:
            start.wait()
            try:
                outcomes.put(opened.add_new(trace))
            except Exception as error:  # reported to the test, which fails on it
                outcomes.put(f"{type(error).__name__}: {error}")


def test_two_processes_adding_one_trace_id(store_dir, make_trace, index_url):
    """Two real processes add the same trace id at the same moment, three times over: each
    time exactly one returns True and the other False; one file and one row per id."""
    with open_store(store_dir, db_url=index_url, writable=True):
        pass  # created (and bound) before the race, as a recording job's store would be
    traces = [make_trace(seed=10 + seed) for seed in range(3)]
    fork = multiprocessing.get_context("fork")
    start, outcomes = fork.Barrier(2), fork.Queue()
    processes = [
        fork.Process(target=_race, args=(str(store_dir), index_url, traces, start, outcomes))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    results = [outcomes.get(timeout=120) for _ in range(2 * len(traces))]
    for process in processes:
        process.join(timeout=60)
    assert sorted(results, key=str) == [False, False, False, True, True, True], results
    with open_store(store_dir, db_url=index_url) as opened:
        assert opened.query(TraceQuery()).total == 3
        assert len([t for t, _ in opened.layout.trace_files()]) == 3
        assert opened.verify() == []


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_cli_on_a_postgresql_index(store_dir, make_trace, fresh_postgres_url):
    """ls, tag, verify, gc, rm, reindex and migrate with --db; reindex keeps tags as last
    edited and notes as written (ids too), and the next note continues after them."""
    with open_store(store_dir, db_url=fresh_postgres_url, writable=True) as st:
        tagged = make_trace(seed=1)
        tagged.info.tags = ["kept"]
        a, b = st.add(tagged), st.add(make_trace(seed=2))
        first = st.add_note(a, "look at the left patch", token_position=3)
        st.add_note(a, "second thought")
    opts = ["--store", str(store_dir), "--db", fresh_postgres_url]
    code, out = _cli("ls", *opts)
    assert code == 0 and "2 trace(s)" in out and a in out
    assert _cli("tag", a, "good", *opts)[0] == 0
    assert _cli("verify", *opts)[0] == 0
    assert "removed 0 temp file(s)" in _cli("gc", *opts)[1]
    assert _cli("rm", b, "--yes", *opts)[0] == 0
    code, out = _cli("reindex", *opts)
    assert code == 0 and "indexed 1 trace(s)" in out
    assert "kept from the old index: 2 tag(s), 2 note(s)" in out, out
    code, out = _cli("migrate", *opts)
    assert code == 0 and "schema version 2" in out
    with open_store(store_dir, db_url=fresh_postgres_url, writable=True) as st:
        assert st.get(a).tags == ["good", "kept"]  # reindex: the tag added later stays
        notes = st.notes(a)
        assert (notes[0].note_id, notes[0].text) == (first.note_id, first.text)
        assert [n.text for n in notes] == ["look at the left patch", "second thought"]
        assert st.add_note(a, "third").note_id > notes[-1].note_id
        assert st.note_summaries([a]) == {a: (3, "third")}
        assert st.query(TraceQuery(note_contains="LEFT PATCH")).total == 1
        assert st.verify() == []


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("127.0.0.1:{closed}/lvi", "Connection refused"),
        ("127.0.0.1:{port}/no_such_db", 'database "no_such_db" does not exist'),
        ("127.0.0.1:{port}/lvi", 'role "nobody" does not exist'),
    ],
)
def test_database_errors_are_one_line_without_the_password(
    store_dir, make_trace, postgres_url, where, expected
):
    """Server down, a database or user that does not exist: one line, exit 2, and the
    URL's password is never shown; nothing is created in the store directory."""
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    user = "nobody" if "nobody" in expected else "postgres"
    url = f"postgresql+psycopg://{user}:s3cret-pw@" + where.format(port=port, closed=closed)
    store_dir.mkdir()
    result = CliRunner().invoke(app, ["ls", "--store", str(store_dir), "--db", url])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert "s3cret-pw" not in result.output and "***" in lines[0]


def test_dashboard_unchanged_on_a_postgresql_index(tmp_path, fresh_postgres_url, monkeypatch):
    """The real app (Streamlit AppTest) on the dashboard's test store indexed in PostgreSQL
    only (its SQLite index deleted): Browse lists every indexed trace, filters by a note
    written to PostgreSQL, and a trace page renders."""
    from streamlit.testing.v1 import AppTest

    from dashboard.config import DB_ENV, STORE_ENV
    from tests.dashboard.conftest import APP, demo_store_at

    demo = demo_store_at(tmp_path / "store")
    indexed = reindex_store(demo.directory, fresh_postgres_url).indexed
    for path in demo.directory.glob("index.sqlite*"):
        path.unlink()
    with open_store(demo.directory, db_url=fresh_postgres_url, writable=True) as st:
        st.add_note(demo.main, "seen in postgres")
    monkeypatch.setenv(STORE_ENV, str(demo.directory))
    monkeypatch.setenv(DB_ENV, fresh_postgres_url)

    def run(view: str | None = None, **params: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params.update(params)
        if view is not None:
            at.switch_page(f"views/{view}.py")
        at.run()
        assert not at.exception and not at.get("error"), [e.value for e in at.exception]
        return at

    assert len(run().dataframe[0].value) == indexed
    assert list(run(note="POSTGRES").dataframe[0].value["id"]) == [demo.main[:8]]
    page = run("generation", trace=demo.main)
    assert page.get("imgs") or page.get("image")
    assert not list(demo.directory.glob("index.sqlite*"))  # PostgreSQL served it all
