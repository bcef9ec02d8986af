"""A recorded dataset as a whole: accuracy per checkpoint and per tag, the same question asked
of two checkpoints (pairs), and samples of per-trace summaries for aggregates.

A question is identified by its image (``image_sha256``) and its prompt, so a manifest
recorded on two checkpoints yields one pair per question. Every function runs its statement
on the index's own engine with bound parameters and takes the same :class:`TraceQuery` as
Browse (its ``limit``, ``offset`` and ordering are ignored: these functions cover the whole
filtered set). A page of pairs is one SQL statement: the page, the total and the number of
differing pairs come back together (window functions), so paging through 5,000 pairs never
counts them twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._failures import guard
from ._index import TraceQuery, _checked, results, tags, traces
from ._store import TraceStore
from .errors import InvalidQuery

# trace_results (kind, key) of the compact per-trace summary the dataset view aggregates
# (head image shares, a normalised relevancy grid): computed once from the trace's file.
SUMMARY_KIND = "dataset"
SUMMARY_KEY = "summary-v1"
MAX_PAGE_ROWS = 1_000


@dataclass(frozen=True, order=True)
class Checkpoint:
    """A model at one revision: what "accuracy per checkpoint" groups by."""

    model_id: str
    model_revision: str

    @property
    def label(self) -> str:
        return f"{self.model_id} @ {self.model_revision}"


@dataclass(frozen=True)
class AccuracyRow:
    """Counts of one group: ``judged`` traces carry a verdict (a reference answer), of which
    ``correct`` were right. ``tag`` is None in the per-checkpoint table."""

    checkpoint: Checkpoint
    tag: str | None
    traces: int
    judged: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.judged if self.judged else None


@dataclass(frozen=True)
class PairSide:
    trace_id: str
    checkpoint: Checkpoint
    answer: str
    correct: bool | None


@dataclass(frozen=True)
class Pair:
    """One question (image + prompt) answered by two checkpoints."""

    prompt: str
    image_name: str
    left: PairSide
    right: PairSide
    differs: bool  # answers differ, ignoring case and surrounding space


@dataclass(frozen=True)
class PairsPage:
    items: list[Pair]
    total: int  # pairs in the whole filtered set
    differing: int  # of which the answers differ
    limit: int
    offset: int


@dataclass(frozen=True)
class SampleRow:
    """A trace of an aggregate's sample and its stored summary (None: not computed yet)."""

    trace_id: str
    checkpoint: Checkpoint
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class PairedSample:
    left: SampleRow
    right: SampleRow


@contextmanager
def _connect(store: TraceStore) -> Iterator[Connection]:
    """A read connection; database failures become one :class:`StoreError`."""
    with guard("reading the index"), store._index.engine.connect() as conn:
        yield conn


def _conditions(store: TraceStore, conn: Connection, query: TraceQuery) -> list:
    """The filters of ``query`` as conditions on ``traces``: the index's own logic, so the
    dataset view and Browse always mean the same set."""
    index = store._index
    conds, _ = index.conditions(conn, _checked(query))
    return conds


def _checkpoint_is(table, checkpoint: Checkpoint | None) -> list:
    if checkpoint is None:
        return []
    return [
        table.c.model_id == checkpoint.model_id,
        table.c.model_revision == checkpoint.model_revision,
    ]


def _judged_counts() -> tuple[sa.ColumnElement, sa.ColumnElement, sa.ColumnElement]:
    correct = traces.c.correct
    return (
        sa.func.count(),
        sa.func.count(correct),
        sa.func.coalesce(sa.func.sum(sa.case((correct.is_(True), 1), else_=0)), 0),
    )


def accuracy_by_checkpoint(store: TraceStore, query: TraceQuery) -> list[AccuracyRow]:
    """Traces, judged and correct per checkpoint of the filtered set (one GROUP BY)."""
    t = traces.c
    with _connect(store) as conn:
        stmt = (
            sa.select(t.model_id, t.model_revision, *_judged_counts())
            .where(*_conditions(store, conn, query))
            .group_by(t.model_id, t.model_revision)
            .order_by(t.model_id, t.model_revision)
        )
        rows = conn.execute(stmt).all()
    return [AccuracyRow(Checkpoint(m, r), None, n, j, c) for m, r, n, j, c in rows]


def accuracy_by_tag(store: TraceStore, query: TraceQuery) -> list[AccuracyRow]:
    """The same counts per (tag, checkpoint): a question kind is a tag (``demo manifest``
    writes it). Traces without tags appear in no row."""
    t = traces.c
    with _connect(store) as conn:
        stmt = (
            sa.select(tags.c.tag, t.model_id, t.model_revision, *_judged_counts())
            .select_from(traces.join(tags, tags.c.trace_id == t.trace_id))
            .where(*_conditions(store, conn, query))
            .group_by(tags.c.tag, t.model_id, t.model_revision)
            .order_by(tags.c.tag, t.model_id, t.model_revision)
        )
        rows = conn.execute(stmt).all()
    return [AccuracyRow(Checkpoint(m, r), tag, n, j, c) for tag, m, r, n, j, c in rows]


def _pairs(
    store: TraceStore,
    conn: Connection,
    query: TraceQuery,
    left: Checkpoint | None,
    right: Checkpoint | None,
) -> tuple[Any, Any, list, sa.ColumnElement[bool]]:
    """The two sides of every pair among the filtered traces, the join condition and
    whether the answers differ. Without ``left``/``right`` every two checkpoints pair up,
    the one that sorts first on the left."""
    # Both sides are the traces table itself, each restricted to the filtered ids: the join
    # then finds a question's other side through the image-hash index (a materialised
    # filtered set has no index, and SQLite joined it with itself row by row: 0.3 s for
    # 2,000 rows).
    a, b = traces.alias("a"), traces.alias("b")
    on = [a.c.image_sha256 == b.c.image_sha256, a.c.prompt == b.c.prompt]
    conds = _conditions(store, conn, query)
    if conds:
        ids = sa.select(traces.c.trace_id).where(*conds)
        on += [a.c.trace_id.in_(ids), b.c.trace_id.in_(ids)]
    if left is None or right is None:
        on.append(
            sa.or_(
                a.c.model_id < b.c.model_id,
                sa.and_(a.c.model_id == b.c.model_id, a.c.model_revision < b.c.model_revision),
            )
        )
    else:
        if left == right:
            raise InvalidQuery("pairs need two different checkpoints")
        on += _checkpoint_is(a, left) + _checkpoint_is(b, right)
    differs = sa.func.lower(sa.func.trim(a.c.answer)) != sa.func.lower(sa.func.trim(b.c.answer))
    return a, b, on, differs


def pairs_page(
    store: TraceStore,
    query: TraceQuery,
    *,
    limit: int = 25,
    offset: int = 0,
    left: Checkpoint | None = None,
    right: Checkpoint | None = None,
) -> PairsPage:
    """One page of pairs, those whose answers differ first (then by prompt), with the total
    and the differing count, in one statement."""
    if not 1 <= limit <= MAX_PAGE_ROWS or not 0 <= offset < 2**62:
        raise InvalidQuery(f"limit must be 1-{MAX_PAGE_ROWS} and offset from 0")
    with _connect(store) as conn:
        a, b, on, differs = _pairs(store, conn, query, left, right)
        flag = sa.case((differs, 1), else_=0)
        stmt = (
            sa.select(
                a.c.prompt,
                a.c.image_name,
                a.c.trace_id,
                a.c.model_id,
                a.c.model_revision,
                a.c.answer,
                a.c.correct,
                b.c.trace_id,
                b.c.model_id,
                b.c.model_revision,
                b.c.answer,
                b.c.correct,
                flag,
                sa.func.count().over(),
                sa.func.sum(flag).over(),
            )
            .select_from(a.join(b, sa.and_(*on)))
            .order_by(flag.desc(), a.c.prompt, a.c.image_name, a.c.trace_id, b.c.trace_id)
            .limit(sa.bindparam("limit", limit))
            .offset(sa.bindparam("offset", offset))
        )
        rows = conn.execute(stmt).all()
        if not rows and offset:  # past the end: the totals still come from one statement
            count = sa.select(sa.func.count(), sa.func.sum(flag)).select_from(
                a.join(b, sa.and_(*on))
            )
            total, differing = conn.execute(count).one()
            return PairsPage([], int(total), int(differing or 0), limit, offset)
    items = [
        Pair(
            prompt,
            image,
            PairSide(lid, Checkpoint(lm, lr), la, lc),
            PairSide(rid, Checkpoint(rm, rr), ra, rc),
            bool(flagged),
        )
        for prompt, image, lid, lm, lr, la, lc, rid, rm, rr, ra, rc, flagged, _, _ in rows
    ]
    total, differing = (int(rows[0][-2]), int(rows[0][-1] or 0)) if rows else (0, 0)
    return PairsPage(items, total, differing, limit, offset)


def _summary(payload: str | None) -> dict[str, Any] | None:
    return None if payload is None else json.loads(payload)


def _with_summary(table) -> tuple[Any, sa.ColumnElement[bool]]:
    joined = results.alias(f"{table.name}_summary")
    on = sa.and_(
        joined.c.trace_id == table.c.trace_id,
        joined.c.kind == SUMMARY_KIND,
        joined.c.key == SUMMARY_KEY,
    )
    return joined, on


def summary_sample(
    store: TraceStore,
    query: TraceQuery,
    limit: int,
    *,
    checkpoint: Checkpoint | None = None,
    tag: str | None = None,
) -> list[SampleRow]:
    """Up to ``limit`` traces of the filtered set (of one checkpoint, with one tag), with
    their stored summaries. Ordered by trace id: ids are hashes, so the first ``limit`` are
    an unbiased sample that stays the same from one view to the next."""
    t = traces.c
    with _connect(store) as conn:
        summary, on = _with_summary(traces)
        conds = _conditions(store, conn, query) + _checkpoint_is(traces, checkpoint)
        if tag is not None:
            conds.append(t.trace_id.in_(sa.select(tags.c.trace_id).where(tags.c.tag == tag)))
        stmt = (
            sa.select(t.trace_id, t.model_id, t.model_revision, summary.c.payload)
            .select_from(traces.outerjoin(summary, on))
            .where(*conds)
            .order_by(t.trace_id)
            .limit(sa.bindparam("limit", limit))
        )
        rows = conn.execute(stmt).all()
    return [SampleRow(tid, Checkpoint(m, r), _summary(p)) for tid, m, r, p in rows]


def paired_sample(
    store: TraceStore, query: TraceQuery, left: Checkpoint, right: Checkpoint, limit: int
) -> list[PairedSample]:
    """Up to ``limit`` pairs of ``left`` and ``right`` with both sides' stored summaries,
    in a stable order (by the left trace's id)."""
    with _connect(store) as conn:
        a, b, on, _ = _pairs(store, conn, query, left, right)
        sa_, on_a = _with_summary(a)
        sb, on_b = _with_summary(b)
        stmt = (
            sa.select(a.c.trace_id, b.c.trace_id, sa_.c.payload, sb.c.payload)
            .select_from(a.join(b, sa.and_(*on)).outerjoin(sa_, on_a).outerjoin(sb, on_b))
            .order_by(a.c.trace_id, b.c.trace_id)
            .limit(sa.bindparam("limit", limit))
        )
        rows = conn.execute(stmt).all()
    return [
        PairedSample(SampleRow(lid, left, _summary(lp)), SampleRow(rid, right, _summary(rp)))
        for lid, rid, lp, rp in rows
    ]


def checkpoints(store: TraceStore, query: TraceQuery) -> list[Checkpoint]:
    """The checkpoints of the filtered set, in order."""
    return [row.checkpoint for row in accuracy_by_checkpoint(store, query)]
