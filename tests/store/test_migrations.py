"""Index schema migrations (Alembic), on SQLite and on a real PostgreSQL server.

A version-1 index is made the way version 1 made it: the baseline revision only, with no
``alembic_version`` table (as before Alembic) or stamped at the baseline; real rows are put
in; then it is upgraded, and every row must still be there.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from store import FormatTooNew, IndexSchemaTooOld, TraceQuery, migrations, open_store, reindex_store
from store import _index as ix
from store.cli import app

V1_TABLES = (ix.meta, ix.traces, ix.tags, ix.metrics, ix.answer_tokens, ix.results)


def _url(store_dir: Path, index_url: str | None) -> str:
    return index_url or f"sqlite:///{store_dir / 'index.sqlite'}"


def _revision_and_version(url: str) -> tuple[str | None, str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(
            sa.select(ix.meta.c.value).where(ix.meta.c.key == "schema_version")
        ).scalar_one()
        revision = migrations.current(conn)
    engine.dispose()
    return revision, version


def _version_1_store(tmp_path: Path, store_dir: Path, index_url: str | None, make_trace, stamped):
    """A store whose index is schema 1 holding two traces with tags, metrics, answer tokens
    and a result: written by today's code into a scratch store, copied row by row into an
    index made by the baseline revision alone; the trace files copied alongside."""
    scratch = tmp_path / "scratch"
    with open_store(scratch, writable=True) as st:
        a, b = st.add(make_trace(seed=1)), st.add(make_trace(seed=2))
        st.tag(a, "kept")
        st.set_metrics(b, {"iou": 0.5})
        st.put_result(a, "causal", "k", {"x": 1})
        word = st.get(a).prompt.split()[1]
    shutil.copytree(scratch, store_dir, ignore=shutil.ignore_patterns("index.sqlite*"))
    source = sa.create_engine(f"sqlite:///{scratch / 'index.sqlite'}")
    target = sa.create_engine(_url(store_dir, index_url))
    with target.begin() as conn:
        migrations.upgrade(conn, "0001")
        if not stamped:
            conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.execute(ix.meta.delete().where(ix.meta.c.key == "store_id"))
        with source.connect() as src:
            for table in V1_TABLES:
                rows = [dict(r._mapping) for r in src.execute(sa.select(table))]
                if table is ix.meta:
                    rows = [r for r in rows if r["key"] == "store_id"]
                conn.execute(table.insert(), rows)
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "INSERT INTO traces_fts(rowid, prompt, answer) SELECT rowid, prompt, answer "
                "FROM traces"
            )
        assert not sa.inspect(conn).has_table("trace_notes")
    source.dispose()
    target.dispose()
    return a, b, word


@pytest.mark.parametrize("stamped", [False, True], ids=["before-alembic", "baseline"])
def test_version_1_index_upgrades_with_its_rows(
    tmp_path, store_dir, make_trace, index_url, stamped
):
    a, b, word = _version_1_store(tmp_path, store_dir, index_url, make_trace, stamped)
    url = _url(store_dir, index_url)
    assert _revision_and_version(url) == ("0001" if stamped else None, "1")
    with pytest.raises(IndexSchemaTooOld, match="store migrate"):
        open_store(store_dir, db_url=index_url)  # read-only: says what to run, changes nothing
    assert _revision_and_version(url) == ("0001" if stamped else None, "1")
    opts = ["--store", str(store_dir)] + (["--db", index_url] if index_url else [])
    result = CliRunner().invoke(app, ["migrate", *opts])
    assert result.exit_code == 0 and "schema version 2" in result.output, result.output
    assert _revision_and_version(url) == ("0002", "2")
    with open_store(store_dir, db_url=index_url) as st:
        assert {i.trace_id for i in st.query(TraceQuery())} == {a, b}
        assert st.get(a).tags == ["kept"] and st.get(b).metrics == {"iou": 0.5}
        assert st.get_result(a, "causal", "k") == {"x": 1}
        assert a in {i.trace_id for i in st.query(TraceQuery(text=word))}
        token = st.get(b).answer.split()[0] if st.get(b).answer.split() else None
        if token:
            assert b in {i.trace_id for i in st.query(TraceQuery(answer_token=token))}
        assert st.verify() == []
    with open_store(store_dir, db_url=index_url, writable=True) as st:
        note = st.add_note(a, "new table works")
        assert [n.note_id for n in st.notes(a)] == [note.note_id]


def test_new_index_is_at_head_and_a_newer_one_is_refused(store_dir, make_trace, index_url):
    with open_store(store_dir, db_url=index_url, writable=True) as st:
        st.add(make_trace())
    url = _url(store_dir, index_url)
    assert _revision_and_version(url) == ("0002", "2")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(ix.meta.update().where(ix.meta.c.key == "schema_version"), {"value": "3"})
    engine.dispose()
    with pytest.raises(FormatTooNew, match="pip install -U"):
        open_store(store_dir, db_url=index_url)


def test_reindex_keeps_notes(store_dir, make_trace, index_url):
    """Notes come back on the traces indexed again, ids and all; the note of a trace whose
    file is gone is kept as JSON in quarantine/ (never dropped), where verify lists it."""
    with open_store(store_dir, db_url=index_url, writable=True) as st:
        a, gone = st.add(make_trace(seed=1)), st.add(make_trace(seed=2))
        kept = st.add_note(a, "keep me", region=(0, (1, 2, 30, 40)), author="ana")
        st.add_note(gone, "orphaned note")
        path = st.layout.trace_path(gone)
    path.unlink()
    report = reindex_store(store_dir, index_url)
    assert report.indexed == 1 and report.carried["trace_notes"] == 1
    assert report.set_aside == store_dir / "quarantine" / "index-rows-1.json"
    assert "orphaned note" in report.set_aside.read_text()
    with open_store(store_dir, db_url=index_url, writable=True) as st:
        assert st.notes(a) == [kept]
        assert st.add_note(a, "after").note_id > kept.note_id
        assert {p.kind for p in st.verify()} == {"quarantined"}
    assert _revision_and_version(_url(store_dir, index_url)) == ("0002", "2")


def test_reindex_keeps_what_was_added_after_recording(store_dir, make_trace, index_url):
    """Methods' results, metrics and tags edited after recording, and the live queue, are in
    the index only (the files hold what was recorded): a reindex puts them back — on
    PostgreSQL, where the tables are dropped, they would otherwise be gone."""
    from dataclasses import replace

    from store.jobs import JobQueue, LiveRequest

    first = make_trace(seed=1)
    first = replace(first, info=replace(first.info, tags=("demo", "colour")))
    with open_store(store_dir, db_url=index_url, writable=True) as st:
        a, gone = st.add(first), st.add(make_trace(seed=2))
        recorded_tags = set(st.get(a).tags)
        st.put_result(a, "faithfulness", "deletion@1/abc", {"auc": [0.25]})
        st.put_result(gone, "faithfulness", "deletion@1/abc", {"auc": [0.5]})
        st.set_metrics(a, {"deletion_auc.random": 0.9})
        assert recorded_tags  # a removed recorded tag must stay removed
        st.untag(a, sorted(recorded_tags)[0])
        st.tag(a, "reviewed")
        tags_before, metrics_before = set(st.get(a).tags), dict(st.get(a).metrics)
        path = st.layout.trace_path(gone)
    with JobQueue(store_dir, index_url) as queue:
        job = queue.submit(LiveRequest(image=queue.save_upload(_png()), prompt="What is it?"))
    path.unlink()
    report = reindex_store(store_dir, index_url)
    assert report.carried["trace_results"] == 1 and report.carried["jobs"] == 1
    with open_store(store_dir, db_url=index_url) as st:
        assert st.get_result(a, "faithfulness", "deletion@1/abc") == {"auc": [0.25]}
        assert set(st.get(a).tags) == tags_before and dict(st.get(a).metrics) == metrics_before
    with JobQueue(store_dir, index_url) as queue:
        assert queue.get(job).state == "queued"
    orphans = json.loads(report.set_aside.read_text())
    assert [r["trace_id"] for r in orphans["trace_results"]] == [gone]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()
