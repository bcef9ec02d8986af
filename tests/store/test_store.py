"""The TraceStore API: add, query, edit, results, maintenance and its guarantees."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import sqlalchemy as sa

from store import (
    CorruptTrace,
    FormatTooNew,
    IndexSchemaTooOld,
    InvalidName,
    InvalidTraceId,
    StoreError,
    StoreReadOnly,
    TraceNotFound,
    TraceQuery,
    new_trace_id,
    open_store,
    reindex_store,
)


def _add(store, make_trace, seed, **info):
    """Add a trace whose answer tokens are the words of ``info["answer"]``."""
    trace = make_trace(seed=seed)
    trace.info = dataclasses.replace(trace.info, **info)
    p, n = trace.tokens.prompt_length, trace.tokens.answer_length
    trace.tokens.text[p:] = ([f"\u2581{w}" for w in trace.info.answer.split()] + ["."] * n)[:n]
    return store.add(trace)


@pytest.fixture
def filled(store, make_trace):
    """Five traces with known models, texts, dates, tags and metrics."""
    ids = {
        "a": _add(
            store,
            make_trace,
            1,
            model_id="m/one",
            prompt="What colour is the car?",
            answer="red car",
            created_at="2026-01-01T10:00:00Z",
            correct=True,
            tags=["cars"],
            metrics={"iou": 0.9},
        ),
        "b": _add(
            store,
            make_trace,
            2,
            model_id="m/one",
            prompt="Where is the dog?",
            answer="left",
            created_at="2026-01-02T10:00:00+00:00",
            correct=False,
            metrics={"iou": 0.2},
        ),
        "c": _add(
            store,
            make_trace,
            3,
            model_id="m/two",
            prompt="Is it RED?",
            answer="no, blue",
            created_at="2026-02-01T00:00:00",
            tags=["cars", "hard"],
            model_revision="rev2",
        ),
        "d": _add(
            store,
            make_trace,
            4,
            model_id="m/two",
            prompt="100% sure_thing",
            answer="yes",
            created_at="2026-03-01T12:00:00+02:00",
        ),
        "e": _add(
            store,
            make_trace,
            5,
            model_id="m/one",
            prompt="x'); DROP TABLE traces; --",
            answer="ok",
            created_at="2026-03-05",
        ),
    }
    return ids


def _ids(store, **kw):
    return {info.trace_id for info in store.query(TraceQuery(**kw)).items}


def test_filters(store, filled):
    f = filled
    assert store.query(TraceQuery()).total == 5
    assert _ids(store, model="m/two") == {f["c"], f["d"]}
    assert _ids(store, model="m/two", model_revision="rev2") == {f["c"]}
    assert _ids(store, text="red") == {f["a"], f["c"]}  # answer 'red car', prompt 'RED'
    assert _ids(store, prompt_contains="red") == {f["c"]}
    assert _ids(store, answer_contains="red") == {f["a"]}
    assert _ids(store, text="colour is") == {f["a"]}
    assert _ids(store, text="is") == {f["a"], f["b"], f["c"]}  # short: LIKE path
    assert _ids(store, text="100%") == {f["d"]}  # LIKE wildcards are literal
    assert _ids(store, text="e_t") == {f["d"]}  # "sure_thing"
    assert _ids(store, text="e%t") == set()
    assert _ids(store, text="%") == {f["d"]}  # short text: LIKE, escaped
    assert _ids(store, text="_") == {f["d"]}
    assert _ids(store, text="sure_thing") == {f["d"]}
    assert _ids(store, text="DROP TABLE") == {f["e"]}  # bound parameters only
    assert _ids(store, answer_token="RED") == {f["a"]}
    assert _ids(store, answer_token="blue") == {f["c"]}
    assert _ids(store, answer_token="car") == {f["a"]}
    assert _ids(store, answer_token="ca") == set()  # whole tokens only
    assert _ids(store, tag="cars") == {f["a"], f["c"]}
    assert _ids(store, correct=True) == {f["a"]}
    assert _ids(store, correct=False) == {f["b"]}
    assert _ids(store, created_after="2026-01-02", created_before="2026-03-01T11:00:00Z") == {
        f["b"],
        f["c"],
        f["d"],  # d is 10:00 UTC
    }
    assert _ids(store, metric_ranges={"iou": (0.5, None)}) == {f["a"]}
    assert _ids(store, metric_ranges={"iou": (None, 0.5)}) == {f["b"]}
    assert _ids(store, model="m/one", text="car", created_after="2025-12-31") == {f["a"]}


def test_answer_tokens_come_from_the_token_table(store, make_trace):
    trace = make_trace(seed=7)
    tid = store.add(trace)
    word = trace.tokens.text[trace.tokens.prompt_length]
    assert tid in _ids(store, answer_token=word.upper())


def test_order_and_pages(store, filled):
    f = filled
    newest = store.query(TraceQuery(limit=2))
    assert [i.trace_id for i in newest.items] == [f["e"], f["d"]]
    assert newest.total == 5 and newest.has_more and len(newest) == 2
    oldest = store.query(TraceQuery(descending=False, limit=2, offset=1))
    assert [i.trace_id for i in oldest] == [f["b"], f["c"]]
    by_iou = store.query(TraceQuery(order_by="metric:iou", descending=True, limit=1))
    assert by_iou.items[0].trace_id == f["a"]
    with pytest.raises(ValueError):
        store.query(TraceQuery(order_by="prompt; DROP TABLE traces"))


def test_edit_tags_metrics_models(store, filled):
    a = filled["a"]
    store.tag(a, "x", "y", "x")
    store.untag(a, "cars")
    store.set_metrics(a, {"iou": 0.1, "new": 3})
    info = store.get(a)
    assert info.tags == ["x", "y"] and info.metrics == {"iou": 0.1, "new": 3.0}
    with store.open(a) as tr:
        assert tr.info.tags == ["x", "y"]  # opened traces see index edits
    assert store.models() == ["m/one", "m/two"]
    assert store.tags() == ["cars", "hard", "x", "y"]
    with pytest.raises(InvalidName):
        store.tag(a, "")
    with pytest.raises(InvalidName):
        store.tag(a, "bad\ntag")
    with pytest.raises(TraceNotFound):
        store.tag(new_trace_id(), "x")


def test_results_table(store, filled):
    a = filled["a"]
    assert store.get_result(a, "causal", "3/7/12/p=0.1") is None
    store.put_result(a, "causal", "3/7/12/p=0.1", {"scores": [1, 2.5]})
    store.put_result(a, "causal", "3/7/12/p=0.1", {"scores": [3]})  # replaces
    store.put_result(a, "causal", "0/0/0", {"v": "'; DROP TABLE traces; --"})
    assert store.get_result(a, "causal", "3/7/12/p=0.1") == {"scores": [3]}
    assert store.list_results(a, "causal") == {
        "0/0/0": {"v": "'; DROP TABLE traces; --"},
        "3/7/12/p=0.1": {"scores": [3]},
    }
    assert store.list_results(a, "other") == {}
    with pytest.raises(TraceNotFound):
        store.put_result(new_trace_id(), "causal", "k", {})
    store.delete(a)
    assert store.get_result(a, "causal", "0/0/0") is None


def test_delete_and_add_errors(store, make_trace, filled):
    a = filled["a"]
    path = store.layout.trace_path(a)
    store.delete(a)
    assert not path.exists() and a not in store
    with pytest.raises(TraceNotFound):
        store.get(a)
    with pytest.raises(TraceNotFound):
        store.delete(a)
    trace = make_trace(seed=9)
    tid = store.add(trace)
    with pytest.raises(StoreError, match="already"):
        store.add(trace)
    bad = make_trace(seed=9)
    bad.lm_attention = bad.lm_attention[:, :, :-1]
    with pytest.raises(ValueError):
        store.add(bad)
    assert store.verify() == [] and tid in store


def test_empty_trace_id_gets_one(store, make_trace):
    trace = make_trace()
    trace.info.trace_id = ""
    tid = store.add(trace)
    assert len(tid) == 32 and trace.info.trace_id == ""  # caller's object untouched


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "/tmp/x", "G" * 32, "0" * 31, "0" * 32 + "/..", "", None, 3]
)
def test_ids_cannot_escape_the_store(store, make_trace, bad):
    for call in (store.get, store.open, store.delete, lambda t: store.tag(t, "x")):
        with pytest.raises(InvalidTraceId):
            call(bad)
    trace = make_trace()
    trace.info.trace_id = bad if isinstance(bad, str) and bad else "../x"
    with pytest.raises(InvalidTraceId):
        store.add(trace)


def test_export(store, filled, tmp_path):
    out = store.export(filled["c"], tmp_path / "out")
    assert out.name == f"{filled['c']}.h5"
    assert out.read_bytes() == store.layout.trace_path(filled["c"]).read_bytes()
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["tags"] == ["cars", "hard"] and info["model_revision"] == "rev2"


def test_verify_finds_each_kind_of_damage_and_gc_cleans(store, filled):
    lay = store.layout
    a, b, c, d = filled["a"], filled["b"], filled["c"], filled["d"]
    assert store.verify() == []
    # flipped byte in a
    pa = lay.trace_path(a)
    data = bytearray(pa.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pa.write_bytes(bytes(data))
    # missing file for b
    shutil.move(lay.trace_path(b), lay.root / "b.bak")
    # c's path holds d's file
    shutil.copyfile(lay.trace_path(d), lay.trace_path(c))
    # orphans: a trace whose row is gone, another trace's file under a new id; a stray file
    orphan = lay.trace_path(filled["e"])
    store._index.delete(filled["e"])
    alien = lay.trace_path(new_trace_id())
    alien.parent.mkdir(exist_ok=True)
    shutil.copyfile(lay.trace_path(d), alien)
    stray = lay.data_dir / "notes.txt"
    stray.write_text("x")
    temp = lay.tmp_dir / f"{new_trace_id()}.1.abcdabcd.tmp.h5"
    temp.write_bytes(b"half")
    found = {(p.kind, p.trace_id) for p in store.verify()}
    assert found == {
        ("checksum_mismatch", a),
        ("missing_file", b),
        ("wrong_file", c),
        ("orphan_file", orphan.stem),
        ("orphan_file", alien.stem),
        ("foreign_file", None),
        ("temp_leftover", None),
    }
    report = store.gc()
    assert report.removed_orphans == [orphan] and report.removed_temp == [temp]
    assert report.quarantined == [lay.quarantine_dir / alien.name]  # not what it claims: kept
    assert report.freed_bytes > 0 and stray.read_text() == "x"  # not the store's: kept
    kinds = {p.kind for p in store.verify()}
    assert kinds == {
        "checksum_mismatch",
        "missing_file",
        "wrong_file",
        "foreign_file",
        "quarantined",
    }
    with pytest.raises(CorruptTrace):
        store.open(b)


def test_open_store_is_read_only_by_default(store_dir, make_trace):
    with open_store(store_dir, writable=True) as st:
        tid = st.add(make_trace())
    with open_store(store_dir) as st:
        assert st.query().total == 1
        with st.open(tid) as tr:
            assert tr.attention(0, 0).shape == (46, 46)
        for call in (
            lambda: st.add(make_trace(seed=2)),
            lambda: st.tag(tid, "x"),
            lambda: st.delete(tid),
            lambda: st.set_metrics(tid, {"a": 1}),
            lambda: st.put_result(tid, "k", "k", {}),
            st.gc,
        ):
            with pytest.raises(StoreReadOnly, match=r"read-only.*writable=True"):
                call()
    with pytest.raises(StoreError, match="no store"):
        open_store(store_dir.parent / "nothing")


def test_any_sqlalchemy_url_and_like_fallback(tmp_path, make_trace):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with open_store(tmp_path / "s", db_url=url, writable=True) as st:
        tid = st.add(make_trace())
        st._index.has_fts = False  # what a non-SQLite database gets: LIKE
        word = st.get(tid).prompt.split()[1]
        assert tid in _ids(st, text=word.upper())
        assert _ids(st, text="zzzz") == set()
    assert not (tmp_path / "s" / "index.sqlite").exists()
    with open_store(tmp_path / "s", db_url=url) as st:
        assert st.get(tid).trace_id == tid


def test_old_or_new_index_schema(store_dir, make_trace):
    with open_store(store_dir, writable=True) as st:
        tid = st.add(make_trace())
        st.tag(tid, "kept")
    engine = sa.create_engine(f"sqlite:///{store_dir / 'index.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE lvi_meta SET value='0' WHERE key='schema_version'")
    engine.dispose()
    with pytest.raises(IndexSchemaTooOld, match="store reindex"):
        open_store(store_dir, writable=True)
    assert reindex_store(store_dir).indexed == 1
    assert (store_dir / "index.sqlite.bak-1").exists()  # nothing lost
    with open_store(store_dir, writable=True) as st:
        assert st.query().items[0].trace_id == tid and st.verify() == []
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE lvi_meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(FormatTooNew, match="pip install -U"):
        open_store(store_dir)
    engine.dispose()


def test_values_round_trip_through_the_index(store, make_trace):
    trace = make_trace()
    trace.info.extra = {"ground_truth": {"box": [1, 2, 3, 4]}, "versions": {"x": "1"}}
    trace.info.reference_answer = "red"
    tid = store.add(trace)
    info = store.get(tid)
    assert info == trace.info
    assert np.isclose(store.query(TraceQuery(limit=1)).items[0].generation.temperature, 1.0)
