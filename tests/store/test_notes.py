"""Analysts' notes: stored in the index, searchable, checked before they reach SQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store import InvalidName, StoreReadOnly, TraceQuery, TraceStore, open_store


def test_notes_round_trip_and_search(store: TraceStore, make_trace) -> None:
    tid = store.add(make_trace())
    other = store.add(make_trace(seed=1))
    on_trace = store.add_note(tid, "the model looks at the shadow, not the car")
    on_token = store.add_note(tid, "<script>alert(1)</script>", token_position=3, author="ana")
    on_region = store.add_note(tid, "this corner", region=(0, (1, 2, 30.5, 40)))

    notes = store.notes(tid)
    assert [n.note_id for n in notes] == [on_trace.note_id, on_token.note_id, on_region.note_id]
    assert notes[1].text == "<script>alert(1)</script>" and notes[1].token_position == 3
    assert notes[1].author == "ana"
    assert notes[2].region == (0, (1.0, 2.0, 30.5, 40.0))
    assert store.notes(other) == []

    assert [i.trace_id for i in store.query(TraceQuery(note_contains="SHADOW"))] == [tid]
    assert store.query(TraceQuery(note_contains="100%")).total == 0  # LIKE wildcards escaped

    store.delete_note(on_token.note_id)
    assert len(store.notes(tid)) == 2
    with pytest.raises(KeyError):
        store.delete_note(on_token.note_id)
    store.delete(tid)
    assert store.query(TraceQuery(note_contains="shadow")).total == 0


@pytest.mark.parametrize(
    ("text", "kwargs"),
    [
        ("", {}),
        ("   ", {}),
        (None, {}),
        ("x" * 20_001, {}),
        ("ok", {"token_position": -1}),
        ("ok", {"token_position": True}),
        ("ok", {"region": (0, (5, 5, 5, 9))}),
        ("ok", {"region": (0, (0, 0, float("nan"), 1))}),
        ("ok", {"region": (0, (0, 0, 1))}),
        ("ok", {"region": "everywhere"}),
        ("ok", {"author": "a\x00b"}),
    ],
)
def test_bad_notes_are_refused(store: TraceStore, make_trace, text, kwargs) -> None:
    tid = store.add(make_trace())
    with pytest.raises(InvalidName):
        store.add_note(tid, text, **kwargs)
    assert store.notes(tid) == []


def test_read_only_store_refuses_notes(store_dir: Path, store: TraceStore, make_trace) -> None:
    tid = store.add(make_trace())
    with open_store(store_dir) as viewer, pytest.raises(StoreReadOnly):
        viewer.add_note(tid, "no")


def test_version_1_index_gains_the_new_tables_in_place(store_dir: Path, make_trace) -> None:
    with open_store(store_dir, writable=True) as s:
        tid = s.add(make_trace())
    db = sqlite3.connect(store_dir / "index.sqlite")
    with db:
        db.execute("DROP TABLE trace_notes")
        db.execute("DROP TABLE jobs")
        db.execute("DROP TABLE workers")
        db.execute("DROP TABLE alembic_version")  # a real version-1 index has none
        db.execute("UPDATE lvi_meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    with open_store(store_dir, writable=True) as s:
        s.add_note(tid, "kept")
        assert [n.text for n in s.notes(tid)] == ["kept"]
    with open_store(store_dir) as s:
        assert s.get(tid).trace_id == tid
