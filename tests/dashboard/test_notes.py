"""Notes on trace pages (issue 15): add on the trace, on tokens, on a region; delete; shown
as text; a read-only store shows them and says why adding is off; Browse filters by note
text and shows a notes column."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from dashboard.notes import ON_REGION, ON_TOKENS, READ_ONLY
from store import open_store
from tests.dashboard.conftest import demo_store_at

HOSTILE = "<b>bold?</b> **not bold** [x](javascript:alert(1))"


@pytest.fixture(scope="module")
def notes_store(tmp_path_factory):
    """A demo store of this module's own: its notes must not leak into other tests."""
    return demo_store_at(tmp_path_factory.mktemp("notes"))


def _notes(directory: Path, trace_id: str):
    with open_store(directory) as store:
        return store.notes(trace_id)


def _texts(at) -> list[str]:
    return [t.value for t in at.text]


def _key(trace_id: str, name: str) -> str:
    return f"notes:add:{trace_id}:{name}"


def test_add_on_trace_tokens_and_region_then_delete(app, notes_store):
    main, where = notes_store.main, notes_store.directory
    at = app("generation", store_dir=where, trace=main, tokens="1,2", expand=("notes",))
    assert not at.exception
    at.text_area(key=_key(main, "text")).input(HOSTILE)
    at.button(key=_key(main, "submit")).click().run()
    [note] = _notes(where, main)
    assert note.text == HOSTILE and note.token_position is None and note.region is None
    assert any(t.endswith("\n" + HOSTILE) and t.startswith("trace · ") for t in _texts(at))
    assert at.text_area(key=_key(main, "text")).value == ""  # ready for the next note

    at.text_area(key=_key(main, "text")).input("these two tokens")
    at.radio(key=_key(main, "on")).set_value(ON_TOKENS).run()
    at.button(key=_key(main, "submit")).click().run()
    with open_store(where) as store, store.open(main) as trace:
        prompt = trace.tokens.prompt_length
        boxes, size = trace.image.patch_boxes.copy(), trace.image.images[0].size
    tokens = [n.token_position for n in _notes(where, main)[1:]]
    assert tokens == [prompt + 1, prompt + 2]
    assert any(t.startswith("answer token 2: ") for t in _texts(at))

    # A region: the inputs start from the box around the selected patches.
    at = app("relevancy", store_dir=where, trace=main, patches="8,15", expand=("notes",))
    at.radio(key=_key(main, "on")).set_value(ON_REGION).run()
    seeded = [at.number_input(key=_key(main, c)).value for c in ("x0", "y0", "x1", "y1")]
    expected = [*boxes[[8, 15], :2].min(axis=0), *boxes[[8, 15], 2:].max(axis=0)]
    np.testing.assert_allclose(seeded, expected, atol=0.05)
    at.number_input(key=_key(main, "x1")).set_value(float(size[0]) + 1)  # outside the image
    at.text_area(key=_key(main, "text")).input("the shape")
    at.button(key=_key(main, "submit")).click().run()
    assert len(_notes(where, main)) == 3
    assert any("Not added" in w.value for w in at.warning)
    at.number_input(key=_key(main, "x1")).set_value(float(expected[2]))
    at.button(key=_key(main, "submit")).click().run()
    region = _notes(where, main)[-1]
    assert region.region[0] == 0
    np.testing.assert_allclose(region.region[1], expected, atol=0.05)
    assert any(t.startswith("image 0, box (") for t in _texts(at))

    # Delete the first note; an empty note is refused in one line.
    at.button(key=f"notes:delete:{note.note_id}").click().run()
    assert note.note_id not in [n.note_id for n in _notes(where, main)]
    at.text_area(key=_key(main, "text")).input("   ")
    at.button(key=_key(main, "submit")).click().run()
    assert any("write the note first" in w.value for w in at.warning)
    assert len(_notes(where, main)) == 3


def test_browse_filters_by_note_and_shows_a_notes_column(app, notes_store):
    where = notes_store.directory
    with open_store(where, writable=True) as store:
        store.add_note(notes_store.second, "needle in the second trace")
        store.add_note(notes_store.second, "another, newer note " + "x" * 80)
    at = app(store_dir=where, note="NEEDLE")
    assert not at.exception
    [table] = at.dataframe
    assert len(table.value) == 1
    assert table.value["notes"][0] == "2 · another, newer note " + "x" * 40 + "…"
    at = app(store_dir=where)
    column = at.dataframe[0].value["notes"].tolist()
    assert column.count("") == len(column) - 2  # the main trace (earlier test) and the second


@contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """The store made read-only for this process: a read-only bind mount as root (root
    ignores permission bits), plain permissions otherwise."""
    if os.geteuid() == 0:
        done = subprocess.run(
            ["mount", "--bind", "-o", "ro", directory, directory], capture_output=True
        )
        if done.returncode:
            pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
        try:
            yield
        finally:
            # lazily: the app's cached handles still hold the index open
            subprocess.run(["umount", "--lazy", directory], check=True)
        return
    paths = [directory, *directory.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_store_shows_notes_but_adds_none(app, notes_store, tmp_path):
    where = tmp_path / "copy"
    shutil.copytree(notes_store.directory, where)
    with open_store(where, writable=True) as store:
        store.add_note(notes_store.main, "visible while read-only")
    with _read_only(where):
        at = app("attention", store_dir=where, trace=notes_store.main)
        assert not at.exception
        assert any(t.endswith("\nvisible while read-only") for t in _texts(at))
        assert READ_ONLY in [c.value for c in at.caption]
        assert not [b for b in at.button if b.key and b.key.startswith("notes:add:")]
        assert all(b.disabled for b in at.button if b.key and b.key.startswith("notes:delete:"))
