"""store/frames.py: the index and per-token values as DataFrames, CSV and Parquet."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest

from store import TraceNotFound, TraceQuery
from store.frames import (
    TOKEN_COLUMNS,
    TRACE_COLUMNS,
    csv_bytes,
    parquet_bytes,
    query_frame,
    token_frame,
)


@pytest.fixture
def filled(store, make_trace):
    """Seven traces (more than one read chunk when chunked small), two tagged, metrics on some."""
    ids = []
    for seed in range(7):
        trace = make_trace(seed=seed)
        info = dataclasses.replace(
            trace.info,
            created_at=f"2026-01-0{seed + 1}T00:00:00+00:00",
            correct=None if seed == 0 else seed % 2 == 0,
            prompt=f"=cmd|' /C calc'!A0 {seed}" if seed == 3 else trace.info.prompt,
        )
        ids.append(store.add(dataclasses.replace(trace, info=info)))
    store.tag(ids[2], "red, blue")
    store.tag(ids[2], "z")
    store.tag(ids[4], "z")
    store.set_metrics(ids[1], {"acc": 0.25})
    store.set_metrics(ids[2], {"acc": 0.75, "len": 3})
    return ids


def test_query_frame_has_every_match_in_order(store, filled, monkeypatch):
    import store.frames as frames

    monkeypatch.setattr(frames, "_CHUNK", 2)  # several index reads for 7 rows
    asked = TraceQuery(order_by="created_at", descending=False, limit=1, offset=3)
    frame = query_frame(store, asked)
    assert list(frame.columns) == [*TRACE_COLUMNS, "metric:acc", "metric:len"]
    assert frame["trace_id"].tolist() == filled  # all rows, not the page asked for
    row = frame.set_index("trace_id").loc[filled[2]]
    assert row["tags"] == ["red, blue", "z"]
    assert row["metric:acc"] == 0.75 and row["metric:len"] == 3
    assert np.isnan(frame.set_index("trace_id").loc[filled[0], "metric:acc"])
    assert frame["correct"].isna().tolist() == [True] + [False] * 6
    assert frame["correct"].tolist()[1:] == [s % 2 == 0 for s in range(1, 7)]


def test_query_frame_applies_the_filters(store, filled):
    frame = query_frame(store, TraceQuery(tag="z", order_by="created_at", descending=True))
    assert frame["trace_id"].tolist() == [filled[4], filled[2]]
    store.add_note(filled[5], "Looks like a CAT to me")
    frame = query_frame(store, TraceQuery(note_contains="cat"))
    assert frame["trace_id"].tolist() == [filled[5]]
    empty = query_frame(store, TraceQuery(model="nobody"))
    assert empty.empty and list(empty.columns) == list(TRACE_COLUMNS)


def test_csv_and_parquet_round_trip(store, filled):
    frame = query_frame(store, TraceQuery(order_by="created_at", descending=False))
    back = pd.read_parquet(io.BytesIO(parquet_bytes(frame)))
    assert back["prompt"].tolist() == frame["prompt"].tolist()  # verbatim, formula and all
    assert [list(t) for t in back["tags"]] == frame["tags"].tolist()
    text = pd.read_csv(io.BytesIO(csv_bytes(frame)), keep_default_na=False)
    assert text["trace_id"].tolist() == filled
    assert text["prompt"][3] == "'" + frame["prompt"][3]  # a spreadsheet shows, never runs it
    assert json.loads(text["tags"][2]) == ["red, blue", "z"]  # a comma inside a tag survives


def test_token_frame_matches_the_stored_trace(store, filled):
    frame = token_frame(store, [filled[1], filled[0], filled[1]])
    assert list(frame.columns) == list(TOKEN_COLUMNS)
    with store.open(filled[1]) as trace:
        tokens, top_k, relevancy = trace.tokens, trace.top_k, trace.relevancy
        shares = trace.summaries.attention_shares.astype(np.float64).mean(axis=(0, 1))
    first = frame[frame["trace_id"] == filled[1]]
    assert frame["trace_id"].drop_duplicates().tolist() == [filled[1], filled[0]]
    assert first["k"].tolist() == list(range(tokens.answer_length))
    assert first["token"].tolist() == tokens.text[tokens.prompt_length :]
    assert first["position"].iloc[0] == tokens.prompt_length
    np.testing.assert_allclose(first["probability"], top_k.chosen_prob, rtol=1e-6)
    assert first["top_k_tokens"].iloc[2] == list(top_k.text[2])
    np.testing.assert_allclose(first["top_k_probs"].iloc[2], top_k.probs[2], rtol=1e-6)
    np.testing.assert_allclose(first["attention_image_share"], shares[:, 0])
    llm = np.clip(relevancy.llm.astype(np.float64), 0, None)
    expected = llm[:, tokens.image_positions].sum(axis=1) / llm.sum(axis=1)
    np.testing.assert_allclose(first["relevancy_image_share"], expected, rtol=1e-9)
    assert expected.min() > 0 and expected.max() < 1  # not trivially all 0 or all 1


def test_token_frame_without_relevancy_and_for_nothing(store, make_trace):
    bare = store.add(make_trace(seed=9, with_relevancy=False))
    frame = token_frame(store, [bare])
    assert frame["relevancy_image_share"].isna().all() and len(frame) > 0
    assert token_frame(store, []).columns.tolist() == list(TOKEN_COLUMNS)
    with pytest.raises(TraceNotFound):
        token_frame(store, ["0" * 32])


def test_note_summaries_in_one_query(store, filled):
    """The Browse table's notes column: count and newest text per trace, one SQL statement
    for the whole page."""
    import sqlalchemy as sa

    store.add_note(filled[1], "first")
    store.add_note(filled[1], "second")
    store.add_note(filled[3], "only")
    statements: list[str] = []
    engine = store._index.engine
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    summaries = store.note_summaries(filled)
    assert summaries == {filled[1]: (2, "second"), filled[3]: (1, "only")}
    assert len(statements) == 1
    assert store.note_summaries([]) == {}
