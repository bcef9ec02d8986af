"""Hostile review of the Faithfulness page and its neighbours: URL parameters a user can type
and index rows damaged outside the store end as sensible states or one line, never an
exception box."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

FAITHFULNESS = "faithfulness"


def _exceptions(at) -> list[str]:
    return [e.value for e in at.exception]


@pytest.mark.parametrize("tokens", ["²", "--1", "-1", "999999", "1,²,x"])
def test_token_selection_in_the_url_never_raises(app, demo_store, tokens):
    # '²'.isdigit() and '--1'.lstrip('-').isdigit() are True: int() raised on the page
    at = app(FAITHFULNESS, trace=demo_store.main, tokens=tokens)
    assert not _exceptions(at)


def test_head_and_tile_in_the_url_never_raise(app, demo_store, family_store):
    assert not _exceptions(app("causal", trace=demo_store.main, head="²"))
    tiled = app("relevancy", store_dir=family_store.directory, trace=family_store.tiled, tile="²")
    assert not _exceptions(tiled)


def test_a_damaged_result_row_is_one_line_on_the_page(app, demo_store, tmp_path):
    directory = tmp_path / "store"
    shutil.copytree(demo_store.directory, directory)
    conn = sqlite3.connect(directory / "index.sqlite")
    with conn:
        conn.execute(
            "INSERT INTO trace_results (trace_id, kind, key, payload, updated_at) "
            "VALUES (?, 'faithfulness', 'deletion@1/x', '{broken', '2026-11-30')",
            (demo_store.main,),
        )
    conn.close()
    at = app(FAITHFULNESS, store_dir=directory, trace=demo_store.main)
    assert not _exceptions(at)
    (error,) = at.error
    shown = error.value.replace("\\", "")  # Markdown-escaped: shown as typed
    assert "faithfulness/deletion@1/x" in shown and "\n" not in shown
