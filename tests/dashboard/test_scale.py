"""Browse stays fast on a big store: it asks the index for one page, never for everything."""

from __future__ import annotations

import json
import time

import pytest

from dashboard.components.filters import PAGE_SIZE
from store import TraceStore, open_store
from store.synthetic import make_synthetic_trace

ROWS = 10_000


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory):
    """10,000 index rows in well under a second: one real trace, then its row cloned in SQL.

    Only the first row has a trace file; Browse must cope (its thumbnail is simply absent).
    """
    import sqlalchemy as sa

    from store._index import traces  # test-only: bulk rows without writing 10k HDF5 files

    directory = tmp_path_factory.mktemp("big")
    with open_store(directory, writable=True) as store:
        seed_id = store.add(make_synthetic_trace(seed=0))
        engine = store._index.engine
        with engine.begin() as conn:
            row = dict(conn.execute(sa.select(traces)).mappings().one())
            info = json.loads(row["info_json"])
            clones = []
            for i in range(1, ROWS):
                trace_id = f"{i:032x}"
                created = f"2024-01-01T00:00:{i % 60:02d}+00:00"
                info.update(trace_id=trace_id, created_at=created, prompt=f"prompt {i}")
                clones.append(
                    {
                        **row,
                        "trace_id": trace_id,
                        "created_at": created,
                        "prompt": f"prompt {i}",
                        "info_json": json.dumps(info),
                    }
                )
            conn.execute(traces.insert(), clones)
    return directory, seed_id


def test_browse_queries_one_page_of_ten_thousand(app, big_store, monkeypatch):
    directory, _ = big_store
    calls = []
    real_query = TraceStore.query

    def spy(self, q=None):
        calls.append((q.limit, q.offset))
        return real_query(self, q)

    monkeypatch.setattr(TraceStore, "query", spy)
    started = time.perf_counter()
    at = app(store_dir=directory, page="200")
    elapsed = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    assert calls == [(PAGE_SIZE, 199 * PAGE_SIZE)]
    assert len(at.dataframe[0].value) == PAGE_SIZE
    assert any(f"of {ROWS}" in c.value for c in at.caption)
    assert elapsed < 5.0, f"Browse took {elapsed:.2f}s on {ROWS} traces"
