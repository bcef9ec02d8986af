"""Dataset queries on a real store: accuracy and pairs against a recomputation in Python."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from store import InvalidQuery, TraceQuery, open_store
from store.dataset import (
    SUMMARY_KEY,
    SUMMARY_KIND,
    Checkpoint,
    accuracy_by_checkpoint,
    accuracy_by_tag,
    checkpoints,
    paired_sample,
    pairs_page,
    summary_sample,
)
from store.synthetic import make_synthetic_trace

MODEL = "synthetic/llava-tiny"
A, B, C = (Checkpoint(MODEL, r) for r in ("rev-a", "rev-b", "rev-c"))
KINDS = ("colour", "count", "shape")
QUESTIONS = 9  # on A and B; 4 of them on C too
SHAPE = dict(num_layers=2, num_heads=2, prompt_len=36, answer_len=3, grid=(3, 4))


def _trace(seed: int, checkpoint: Checkpoint, answer: str, reference: str | None, kind: str):
    trace = make_synthetic_trace(**SHAPE, seed=seed, model_revision=checkpoint.model_revision)
    correct = None if reference is None else answer.strip().lower() == reference
    info = dataclasses.replace(
        trace.info,
        answer=answer,
        reference_answer=reference,
        correct=correct,
        tags=["demo", kind],
    )
    return dataclasses.replace(trace, info=info)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dataset(request, tmp_path_factory):
    """Questions asked of A and B (some of C): B is wrong on every third, answers case-
    and space-insensitively equal on some; question 8 has no reference; two traces of one
    checkpoint only. On the store's SQLite index and on a real PostgreSQL server."""
    directory = tmp_path_factory.mktemp("dataset")
    db_url = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_url")
        db_url = server.rsplit("/", 1)[0] + f"/dataset_{uuid.uuid4().hex}"
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {db_url.rsplit('/', 1)[1]}")
        admin.dispose()
    infos = []
    with open_store(directory, db_url, writable=True) as store:
        for q in range(QUESTIONS):
            kind = KINDS[q % 3]
            reference = None if q == 8 else f"answer {q}"
            answers = {A: f"answer {q}", B: f"Answer {q} " if q % 3 else f"wrong {q}"}
            if q < 4:
                answers[C] = "wrong" if q % 2 else f"answer {q}"
            for checkpoint, answer in answers.items():
                trace = _trace(100 + q, checkpoint, answer, reference, kind)
                store.add(trace)
                infos.append(trace.info)
        for seed in (200, 201):  # unpaired: another image each
            trace = _trace(seed, A, "alone", "alone", "count")
            store.add(trace)
            infos.append(trace.info)
    return functools.partial(open_store, directory, db_url), infos


def _python_accuracy(infos, key):
    counts: Counter = Counter()
    for info in infos:
        for group in key(info):
            counts[group, "traces"] += 1
            counts[group, "judged"] += info.correct is not None
            counts[group, "correct"] += info.correct is True
    groups = sorted({g for g, _ in counts})
    return {g: (counts[g, "traces"], counts[g, "judged"], counts[g, "correct"]) for g in groups}


def _python_pairs(infos, left, right):
    def at(info, checkpoint):
        return (info.model_id, info.model_revision) == (
            checkpoint.model_id,
            checkpoint.model_revision,
        )

    return [
        (a.trace_id, b.trace_id, a.answer.strip().lower() != b.answer.strip().lower())
        for a in infos
        for b in infos
        if a.image_sha256 == b.image_sha256
        and a.prompt == b.prompt
        and at(a, left)
        and at(b, right)
    ]


def test_accuracy_per_checkpoint_and_tag_match_python(dataset):
    opened, infos = dataset
    with opened() as store:
        by_checkpoint = accuracy_by_checkpoint(store, TraceQuery())
        by_tag = accuracy_by_tag(store, TraceQuery())
        filtered = accuracy_by_checkpoint(store, TraceQuery(tag="colour"))
        listed = checkpoints(store, TraceQuery())
    expected = _python_accuracy(infos, lambda i: [Checkpoint(i.model_id, i.model_revision)])
    assert {r.checkpoint: (r.traces, r.judged, r.correct) for r in by_checkpoint} == expected
    assert listed == [A, B, C]
    assert next(r for r in by_checkpoint if r.checkpoint == B).accuracy == pytest.approx(5 / 8)
    expected = _python_accuracy(
        infos, lambda i: [(t, Checkpoint(i.model_id, i.model_revision)) for t in i.tags]
    )
    assert {(r.tag, r.checkpoint): (r.traces, r.judged, r.correct) for r in by_tag} == expected
    colour = [i for i in infos if "colour" in i.tags]
    expected = _python_accuracy(colour, lambda i: [Checkpoint(i.model_id, i.model_revision)])
    assert {r.checkpoint: (r.traces, r.judged, r.correct) for r in filtered} == expected


def test_pairs_differing_first_and_paged_without_gaps(dataset):
    opened, infos = dataset
    expected = _python_pairs(infos, A, B)
    assert len(expected) == QUESTIONS and sum(d for *_, d in expected) == 3
    with opened() as store:
        pages = [
            pairs_page(store, TraceQuery(), limit=4, offset=o, left=A, right=B) for o in (0, 4, 8)
        ]
        past = pairs_page(store, TraceQuery(), limit=4, offset=40, left=A, right=B)
    seen = [p for page in pages for p in page.items]
    assert [len(page.items) for page in pages] == [4, 4, 1]
    assert all(page.total == QUESTIONS and page.differing == 3 for page in [*pages, past])
    assert not past.items
    assert sorted((p.left.trace_id, p.right.trace_id, p.differs) for p in seen) == sorted(expected)
    flags = [p.differs for p in seen]
    assert flags == sorted(flags, reverse=True)  # every differing pair before any other
    for pair in seen:
        assert pair.left.checkpoint == A and pair.right.checkpoint == B
        assert pair.differs == (
            pair.left.answer.strip().lower() != pair.right.answer.strip().lower()
        )


def test_pairs_across_every_two_checkpoints_and_filters(dataset):
    opened, infos = dataset
    every = [*_python_pairs(infos, A, B), *_python_pairs(infos, A, C), *_python_pairs(infos, B, C)]
    with opened() as store:
        page = pairs_page(store, TraceQuery(), limit=100)
        wrong = pairs_page(store, TraceQuery(correct=False), limit=100)
        text = pairs_page(store, TraceQuery(answer_contains="wrong"), limit=100)
        with pytest.raises(InvalidQuery):
            pairs_page(store, TraceQuery(), left=A, right=A)
        with pytest.raises(InvalidQuery):
            pairs_page(store, TraceQuery(), limit=0)
    assert sorted((p.left.trace_id, p.right.trace_id) for p in page.items) == sorted(
        (a, b) for a, b, _ in every
    )
    assert page.differing == sum(d for *_, d in every)
    # a filter applies to both sides: both answers wrong (B and C both wrong on question 3)
    assert [(p.left.answer, p.right.answer) for p in wrong.items] == [("wrong 3", "wrong")]
    assert all("wrong" in p.left.answer and "wrong" in p.right.answer for p in text.items)


def test_summary_samples_read_stored_summaries(dataset, tmp_path):
    opened, infos = dataset
    with opened(writable=True) as store:
        sample = summary_sample(store, TraceQuery(), 5, checkpoint=B)
        assert [s.trace_id for s in sample] == sorted(
            i.trace_id for i in infos if i.model_revision == "rev-b"
        )[:5]
        assert all(s.summary is None for s in sample)
        store.put_result(sample[0].trace_id, SUMMARY_KIND, SUMMARY_KEY, {"x": [1, 2]})
        again = summary_sample(store, TraceQuery(), 5, checkpoint=B)
        assert again[0].summary == {"x": [1, 2]} and again[1].summary is None
        kinds = summary_sample(store, TraceQuery(), 50, tag="count")
        assert len(kinds) == sum("count" in i.tags for i in infos)
        paired = paired_sample(store, TraceQuery(), A, B, 50)
        assert len(paired) == QUESTIONS
        hit = [p for p in paired if p.right.trace_id == sample[0].trace_id]
        assert hit and hit[0].right.summary == {"x": [1, 2]} and hit[0].left.summary is None
