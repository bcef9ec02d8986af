"""The SQL index: one row per trace plus tags, metrics, answer tokens and derived results.

SQLAlchemy Core with bound parameters only. SQLite by default (WAL, synchronous=NORMAL, an
FTS5 trigram table for substring search); any SQLAlchemy URL works, with LIKE as the
fallback for text search (PostgreSQL is tested: a shared index for many recorders). The
schema is created and upgraded by the Alembic revisions in ``store/migrations``; the schema
version also lives in ``lvi_meta``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from . import migrations
from .errors import (
    FormatTooNew,
    IndexSchemaTooOld,
    InvalidQuery,
    StoreError,
    StoreOpenError,
    TraceNotFound,
)
from .schema import TraceInfo

INDEX_SCHEMA_VERSION = 2
SCAN_ROWS_LIMIT = 20_000  # below this many candidate rows, text search scans instead of FTS
ONE_PASS_ROWS = 2_000  # below this many candidate rows, one query gives page and total
MAX_ROWS = 2**63 - 1  # SQL integers: a larger limit or offset cannot even be sent
_MIGRATION_LOCK = 0x6C7669  # "lvi": PostgreSQL advisory lock key held while migrating
MIGRATE_HINT = "lvlm-interpret store migrate --store DIR (plus its --db)"
REINDEX_HINT = (
    "run `lvlm-interpret store reindex --store DIR` (rebuilds the index from the trace files)"
)

metadata = sa.MetaData()

meta = sa.Table(
    "lvi_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

traces = sa.Table(
    "traces",
    metadata,
    sa.Column("trace_id", sa.String(32), primary_key=True),
    sa.Column("model_id", sa.String(512), nullable=False),
    sa.Column("model_revision", sa.String(256), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("image_name", sa.String(1024), nullable=False),
    sa.Column("image_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),  # normalised UTC ISO: sortable
    sa.Column("adapter", sa.String(64), nullable=False),
    sa.Column("reference_answer", sa.Text),
    sa.Column("correct", sa.Boolean),
    sa.Column("precision", sa.String(16), nullable=False),
    sa.Column("num_layers", sa.Integer, nullable=False),
    sa.Column("num_heads", sa.Integer, nullable=False),
    sa.Column("prompt_length", sa.Integer, nullable=False),
    sa.Column("answer_length", sa.Integer, nullable=False),
    sa.Column("file_size", sa.BigInteger, nullable=False),
    sa.Column("file_checksum", sa.String(80), nullable=False),
    sa.Column("info_json", sa.Text, nullable=False),
    sa.Index("ix_traces_model_created", "model_id", "created_at"),
    sa.Index("ix_traces_model_revision", "model_id", "model_revision"),
    sa.Index("ix_traces_created", "created_at"),
    sa.Index("ix_traces_correct_created", "correct", "created_at"),
    sa.Index("ix_traces_image", "image_sha256"),
)

_fk = {"ondelete": "CASCADE"}
tags = sa.Table(
    "trace_tags",
    metadata,
    sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id", **_fk), primary_key=True),
    sa.Column("tag", sa.String(200), primary_key=True),
    sa.Index("ix_tags_tag", "tag", "trace_id"),
)

metrics = sa.Table(
    "trace_metrics",
    metadata,
    sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id", **_fk), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_metrics_name_value", "name", "value"),
)

answer_tokens = sa.Table(
    "answer_tokens",
    metadata,
    sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id", **_fk), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("token", sa.String(256), nullable=False),
    sa.Index("ix_answer_tokens_token", "token", "trace_id"),
)

results = sa.Table(
    "trace_results",
    metadata,
    sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id", **_fk), primary_key=True),
    sa.Column("kind", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

notes = sa.Table(
    "trace_notes",
    metadata,
    sa.Column("note_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("trace_id", sa.String(32), sa.ForeignKey("traces.trace_id", **_fk), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("token_position", sa.Integer),  # a position in the trace's token table, or None
    sa.Column("region_json", sa.Text),  # {"image": i, "box": [x0, y0, x1, y1]} original pixels
    sa.Column("author", sa.String(200)),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Index("ix_notes_trace", "trace_id", "note_id"),
)

# Live mode: recording jobs queued by the dashboard and taken by worker processes. The queue
# lives in the index's own database so that no broker has to run beside it.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # queued, running, done, failed
    sa.Column("request_json", sa.Text, nullable=False),  # what to record (JSON)
    sa.Column("submitted_at", sa.String(40), nullable=False),
    sa.Column("started_at", sa.String(40)),
    sa.Column("finished_at", sa.String(40)),
    sa.Column("heartbeat_at", sa.String(40)),
    sa.Column("worker_id", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress", sa.Float),  # 0..1
    sa.Column("progress_text", sa.Text),
    sa.Column("error", sa.Text),  # one line for the user when state is failed
    sa.Column("trace_id", sa.String(32)),  # the recorded trace when state is done
    sa.Index("ix_jobs_state_submitted", "state", "submitted_at"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.String(64), primary_key=True),
    sa.Column("model_id", sa.String(512), nullable=False),
    sa.Column("model_revision", sa.String(256)),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("heartbeat_at", sa.String(40), nullable=False),
    sa.Column("stopped_at", sa.String(40)),
)

_CHILDREN = (tags, metrics, answer_tokens, results, notes)
# SQLite only: model + date filters combined with a text scan read prompts from this index
# instead of the (wide) rows: 0.9 vs 4.7 ms for ~1,000 candidate rows of 100k (measured).
# Not for other databases: PostgreSQL and MySQL limit the size of an index entry.
_SQLITE_COVERING = (
    "CREATE INDEX IF NOT EXISTS ix_traces_model_created_text "
    "ON traces (model_id, created_at, prompt, answer)"
)
_FTS = "traces_fts"  # SQLite only: fts5(prompt, answer, tokenize='trigram'), rowid = traces.rowid
ORDER_COLUMNS = (
    "created_at",
    "model_id",
    "model_revision",
    "prompt",
    "answer",
    "image_name",
    "correct",
    "answer_length",
)


# Dialects whose INSERT can skip a row whose key exists (racing writers of one trace id).
_INSERTS = {"sqlite": sqlite_dialect.insert, "postgresql": postgresql_dialect.insert}


def _infos_statement() -> sa.CompoundSelect:
    """Row JSON, tags and metrics of some traces in one round trip (built once: opening a
    trace must take < 3 ms, and building SQLAlchemy statements is not free)."""
    ids = sa.bindparam("ids", expanding=True)
    none = sa.null().cast(sa.Float)
    return sa.union_all(
        sa.select(traces.c.trace_id, sa.literal("i"), traces.c.info_json, none).where(
            traces.c.trace_id.in_(ids)
        ),
        sa.select(tags.c.trace_id, sa.literal("t"), tags.c.tag, none).where(
            tags.c.trace_id.in_(ids)
        ),
        sa.select(metrics.c.trace_id, sa.literal("m"), metrics.c.name, metrics.c.value).where(
            metrics.c.trace_id.in_(ids)
        ),
    )


_INFOS = _infos_statement()
_SQLITE_INFOS = (
    "SELECT trace_id, 'i', info_json, NULL FROM traces WHERE trace_id IN ({ids}) "
    "UNION ALL SELECT trace_id, 't', tag, NULL FROM trace_tags WHERE trace_id IN ({ids}) "
    "UNION ALL SELECT trace_id, 'm', name, value FROM trace_metrics WHERE trace_id IN ({ids})"
)
_EXISTS = sa.select(traces.c.trace_id).where(traces.c.trace_id == sa.bindparam("tid"))


def normalize_time(value: str) -> str:
    """ISO-8601 (date, naive or with offset) -> UTC ISO with microseconds, which sorts as text."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise ValueError(f"not an ISO-8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def normalize_token(text: str) -> str:
    """Answer-token key: SentencePiece/BPE space markers and case do not matter for search."""
    return text.replace("\u2581", " ").replace("\u0120", " ").strip().lower()


@dataclass
class TraceQuery:
    """Filters for :meth:`TraceStore.query`; ``None`` means "any"; text match ignores case.

    ``text`` matches a substring of the prompt or the answer; ``note_contains`` a substring of
    an analyst's note on the trace; ``answer_token`` one whole
    generated token (case and leading-space markers ignored); ``metric_ranges`` maps a metric
    name to inclusive ``(lo, hi)`` bounds, either may be None. ``order_by`` is a column from
    ``ORDER_COLUMNS`` or ``"metric:<name>"``.
    """

    model: str | None = None
    model_revision: str | None = None
    revision_contains: str | None = None  # case-insensitive substring of model_revision
    text: str | None = None
    prompt_contains: str | None = None
    answer_contains: str | None = None
    answer_token: str | None = None
    tag: str | None = None
    correct: bool | None = None
    created_after: str | None = None
    created_before: str | None = None
    metric_ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    note_contains: str | None = None  # case-insensitive substring of any note on the trace
    order_by: str = "created_at"
    descending: bool = True
    limit: int = 50
    offset: int = 0


@dataclass
class Page:
    """One page of query results; ``total`` counts every match, not just this page."""

    items: list[TraceInfo]
    total: int
    limit: int = 50
    offset: int = 0

    def __iter__(self) -> Iterator[TraceInfo]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


@dataclass
class FileRecord:
    """What the index knows about a trace's file (for verify)."""

    trace_id: str
    file_size: int
    file_checksum: str


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _in_memory(url: sa.engine.URL) -> bool:
    """An SQLite database that lives only as long as the connection (``sqlite://`` etc.)."""
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or url.query.get("mode") == "memory"
        or "mode=memory" in database
    )


def make_engine(url: str, writable: bool) -> Engine:
    """An engine for ``url``; SQLite gets its pragmas on every connection.

    Raises :class:`StoreOpenError` for a string that is no database URL, a database whose
    driver is not installed, and an in-memory database (an index that vanishes on exit
    would let files be recorded that no index row ever points at).
    """
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        raise StoreOpenError(
            f"--db {url!r} is not a database URL; use e.g. sqlite:////path/index.sqlite or "
            "postgresql+psycopg://user@host/db"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    if _in_memory(parsed):
        raise StoreOpenError(
            f"--db {shown} is an in-memory database: the index would vanish with this process. "
            "Give a database file or server, or leave --db out to use the store's own index"
        )
    is_sqlite = parsed.get_backend_name() == "sqlite"
    try:
        engine = sa.create_engine(parsed, connect_args={"timeout": 30} if is_sqlite else {})
    except ImportError as exc:
        raise StoreOpenError(
            f"--db {shown}: its database driver is not installed ({exc}); install it "
            "(e.g. pip install psycopg[binary] for PostgreSQL) or use an sqlite:/// URL"
        ) from None
    except sa.exc.ArgumentError as exc:
        raise StoreOpenError(f"--db {shown}: unknown database or driver ({exc})") from None
    if is_sqlite:
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        if not writable:
            sa.event.listen(
                engine, "connect", lambda c, _r: c.cursor().execute("PRAGMA query_only=ON")
            )
    return engine


def drop_tables(conn: Connection) -> None:
    """Remove every table of the index, Alembic's revision included (for reindex)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_FTS}")
    metadata.drop_all(conn)
    conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")


# Rows added after recording (tags and metrics edited, methods' results, analysts' notes, the
# live queue): the trace files do not hold them, so a reindex reads them first and puts them
# back on the traces it indexes again.
CARRIED = (tags, metrics, results, notes, jobs)


def read_carried(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    """Every row of the :data:`CARRIED` tables, by table name (empty for a table the index
    predates), in primary-key order."""
    present = set(sa.inspect(conn).get_table_names())
    return {
        table.name: [
            dict(r._mapping)
            for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))
        ]
        if table.name in present
        else []
        for table in CARRIED
    }


def _checked(q: TraceQuery) -> TraceQuery:
    """``q`` with its dates normalised and tag in NFC, or :class:`InvalidQuery`."""
    for name in ("limit", "offset"):
        value = getattr(q, name)
        if not isinstance(value, int) or not 0 <= value <= MAX_ROWS:
            raise InvalidQuery(f"{name} must be a whole number from 0 to {MAX_ROWS}, not {value!r}")
    try:
        after = None if q.created_after is None else normalize_time(q.created_after)
        before = None if q.created_before is None else normalize_time(q.created_before)
    except ValueError as exc:
        raise InvalidQuery(f"{exc}; use a date like 2026-01-31 or 2026-01-31T12:00:00Z") from None
    tag = None if q.tag is None else unicodedata.normalize("NFC", q.tag)
    return dataclasses.replace(q, created_after=after, created_before=before, tag=tag)


def _payload(text: str, trace_id: str, kind: str, key: str) -> dict:
    """A stored result's payload, or one line naming the row: a row damaged outside the
    store (edited by hand, a foreign writer) was a JSONDecodeError and a traceback on every
    page and command that lists the trace's results. The row stays; a re-run replaces it."""
    try:
        payload = json.loads(text)
    except ValueError as error:
        payload = error
    if not isinstance(payload, dict):
        raise StoreError(
            f"stored result {kind}/{key} of trace {trace_id} is unreadable (not a JSON "
            f"object); run the method that stored it again to replace it"
        )
    return payload


class Index:
    """All SQL the store runs. Methods take and return plain values and records."""

    def __init__(self, engine: Engine, writable: bool) -> None:
        self.engine = engine
        self.writable = writable
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.has_fts = False
        insert = _INSERTS.get(engine.dialect.name)
        self._insert_trace = (
            traces.insert()
            if insert is None
            else insert(traces).on_conflict_do_nothing(index_elements=["trace_id"])
        )
        self._prepare()

    # -- schema ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        names = set(sa.inspect(self.engine).get_table_names())
        if not names & {"traces", "lvi_meta"}:
            if not self.writable:
                raise StoreError("this store has no index yet; open it with mode='a' to create one")
            self._create()
        elif "lvi_meta" not in names:
            raise IndexSchemaTooOld(
                f"the index has no schema version (unknown layout); {REINDEX_HINT}"
            )
        version = self.schema_version()
        if version > INDEX_SCHEMA_VERSION:
            raise FormatTooNew(
                f"the index has schema version {version}; this lvlm-interpret knows up to "
                f"{INDEX_SCHEMA_VERSION}. Upgrade: pip install -U lvlm-interpret"
            )
        if version < 1:
            raise IndexSchemaTooOld(
                f"the index has schema version {version}, this lvlm-interpret needs "
                f"{INDEX_SCHEMA_VERSION}; {REINDEX_HINT}. Trace files are untouched."
            )
        head = migrations.revision(INDEX_SCHEMA_VERSION)
        with self.engine.connect() as conn:
            at = migrations.current(conn) or migrations.revision(version)
        if at != head and not self.writable:
            raise IndexSchemaTooOld(
                f"the index has schema version {version}, this lvlm-interpret needs "
                f"{INDEX_SCHEMA_VERSION}: run `{MIGRATE_HINT}` (or open the store writable, "
                "which upgrades it in place). Nothing was changed"
            )
        if self.writable:
            self._upgrade(version)
        rows = self._meta()
        self.has_fts = rows.get("fts") == "trigram"
        if self.is_sqlite and self.writable:
            with self.engine.begin() as conn:  # stores made before the index existed
                conn.exec_driver_sql(_SQLITE_COVERING)

    def schema_version(self) -> int:
        return int(self._meta().get("schema_version", 0))

    def _meta(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(meta.c.key, meta.c.value)).all())

    def _upgrade(self, version: int) -> None:
        """Bring the schema to the head revision (stamping an index made before Alembic with
        its schema version first); nothing runs, nor is Alembic imported, when it is there."""
        with self._ddl() as conn:
            at = migrations.current(conn)
            if at == migrations.revision(INDEX_SCHEMA_VERSION):
                return
            if at is None:
                migrations.stamp(conn, migrations.revision(version))
            migrations.upgrade(conn)

    def _create(self) -> None:
        """A new index at the head revision (SQLite in WAL mode: readers never block)."""
        if self.is_sqlite:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        with self._ddl() as conn:
            migrations.upgrade(conn)

    @contextmanager
    def _ddl(self) -> Iterator[Connection]:
        """A transaction that holds schema changes too, one process at a time. Python's
        sqlite3 begins one only before INSERT/UPDATE/DELETE, so a process killed while
        creating tables would leave half an index that no later open accepts; an explicit
        BEGIN IMMEDIATE makes it all or nothing and takes the write lock first. PostgreSQL's
        DDL is transactional; an advisory lock makes a second process opening an old shared
        index wait, then read the revision the first one left."""
        with self.engine.begin() as conn:
            if self.is_sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            yield conn

    def store_id(self) -> str | None:
        """The id of the store directory this index belongs to (None: not bound yet)."""
        with self.engine.connect() as conn:
            stmt = sa.select(meta.c.value).where(meta.c.key == "store_id")
            return conn.execute(stmt).scalar_one_or_none()

    def bind(self, store_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(meta.insert(), {"key": "store_id", "value": store_id})

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(traces)).scalar_one()

    def restore_carried(
        self, rows: dict[str, list[dict[str, Any]]], known: Collection[str]
    ) -> None:
        """Put back rows :func:`read_carried` read from the index this one replaces (reindex),
        in one transaction. Tags of the traces the old index ``known`` replace the tags their
        files hold (a tag removed stays removed); metrics and results replace the same names
        and keys (a value set after recording wins); notes keep their ids (on PostgreSQL
        the id sequence then continues after them); jobs come back as they were."""
        with self.engine.begin() as conn:
            known = sorted(known)
            for start in range(0, len(known), 500):  # bound the number of SQL parameters
                conn.execute(tags.delete().where(tags.c.trace_id.in_(known[start : start + 500])))
            for table in CARRIED:
                chosen = rows.get(table.name) or []
                if not chosen:
                    continue
                if table in (metrics, results):
                    keys = list(table.primary_key.columns)
                    match = [c == sa.bindparam(f"pk_{c.name}") for c in keys]
                    conn.execute(
                        table.delete().where(*match),
                        [{f"pk_{c.name}": row[c.name] for c in keys} for row in chosen],
                    )
                conn.execute(table.insert(), chosen)
            if rows.get(notes.name) and self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    "SELECT setval(pg_get_serial_sequence('trace_notes', 'note_id'), "
                    "(SELECT max(note_id) FROM trace_notes))"
                )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- writing -----------------------------------------------------------------------------
    def insert(
        self,
        info: TraceInfo,
        *,
        precision: str,
        shape: tuple[int, int],
        prompt_length: int,
        answer_tokens_text: Sequence[str],
        file_size: int,
        file_checksum: str,
    ) -> bool:
        """Index a trace; False (nothing written) when its id is indexed already, also when
        another process inserts it at the same moment (ON CONFLICT DO NOTHING)."""
        row = {
            "trace_id": info.trace_id,
            "model_id": info.model_id,
            "model_revision": info.model_revision,
            "prompt": info.prompt,
            "answer": info.answer,
            "image_name": info.image_name,
            "image_sha256": info.image_sha256,
            "created_at": normalize_time(info.created_at),
            "adapter": info.adapter,
            "reference_answer": info.reference_answer,
            "correct": info.correct,
            "precision": precision,
            "num_layers": shape[0],
            "num_heads": shape[1],
            "prompt_length": prompt_length,
            "answer_length": len(answer_tokens_text),
            "file_size": file_size,
            "file_checksum": file_checksum,
            "info_json": json.dumps(info.to_dict()),
        }
        with self.engine.begin() as conn:
            res = conn.execute(self._insert_trace, row)
            if res.rowcount == 0:
                return False
            if self.has_fts:
                conn.execute(
                    sa.text(f"INSERT INTO {_FTS}(rowid, prompt, answer) VALUES (:r, :p, :a)"),
                    {"r": res.lastrowid, "p": info.prompt, "a": info.answer},
                )
            tok_rows = [
                {"trace_id": info.trace_id, "position": i, "token": normalize_token(t)[:256]}
                for i, t in enumerate(answer_tokens_text)
            ]
            tok_rows = [r for r in tok_rows if r["token"]]
            if tok_rows:
                conn.execute(answer_tokens.insert(), tok_rows)
            self._add_tags(conn, info.trace_id, info.tags)
            self._set_metrics(conn, info.trace_id, info.metrics)
        return True

    def _add_tags(self, conn: Connection, trace_id: str, new: Iterable[str]) -> None:
        have = set(conn.execute(sa.select(tags.c.tag).where(tags.c.trace_id == trace_id)).scalars())
        rows = [{"trace_id": trace_id, "tag": t} for t in dict.fromkeys(new) if t not in have]
        if rows:
            conn.execute(tags.insert(), rows)

    def _set_metrics(self, conn: Connection, trace_id: str, values: dict[str, float]) -> None:
        if not values:
            return
        rows = [{"trace_id": trace_id, "name": k, "value": float(v)} for k, v in values.items()]
        self._replace(conn, metrics, rows)

    def _replace(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, replacing those whose primary key exists, in one statement: a
        delete then an insert let two writers of one key (two ``analyse`` runs on a trace,
        PostgreSQL) both pass the delete, and the second insert failed on the primary key."""
        keys = [c.name for c in table.primary_key.columns]
        insert = _INSERTS.get(self.engine.dialect.name)
        if insert is None:  # no upsert here: the two statements in the caller's transaction
            for row in rows:
                conn.execute(table.delete().where(*(table.c[k] == row[k] for k in keys)))
            conn.execute(table.insert(), rows)
            return
        stmt = insert(table)
        changed = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=changed), rows)

    def _require(self, conn: Connection, trace_id: str) -> None:
        found = conn.execute(
            sa.select(traces.c.trace_id).where(traces.c.trace_id == trace_id)
        ).first()
        if found is None:
            raise TraceNotFound(f"no trace {trace_id} in this store")

    def add_tags(self, trace_id: str, new: Sequence[str]) -> None:
        with self.engine.begin() as conn:
            self._require(conn, trace_id)
            self._add_tags(conn, trace_id, new)

    def remove_tags(self, trace_id: str, old: Sequence[str]) -> None:
        with self.engine.begin() as conn:
            self._require(conn, trace_id)
            conn.execute(
                tags.delete().where(tags.c.trace_id == trace_id, tags.c.tag.in_(list(old)))
            )

    def set_metrics(self, trace_id: str, values: dict[str, float]) -> None:
        with self.engine.begin() as conn:
            self._require(conn, trace_id)
            self._set_metrics(conn, trace_id, values)

    def delete(self, trace_id: str) -> None:
        with self.engine.begin() as conn:
            self._require(conn, trace_id)
            if self.has_fts:
                conn.execute(
                    sa.text(
                        f"DELETE FROM {_FTS} WHERE rowid = "
                        "(SELECT rowid FROM traces WHERE trace_id = :t)"
                    ),
                    {"t": trace_id},
                )
            for child in _CHILDREN:
                conn.execute(child.delete().where(child.c.trace_id == trace_id))
            conn.execute(traces.delete().where(traces.c.trace_id == trace_id))

    def put_result(self, trace_id: str, kind: str, key: str, payload: dict) -> None:
        text = json.dumps(payload)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
        with self.engine.begin() as conn:
            self._require(conn, trace_id)
            row = {"trace_id": trace_id, "kind": kind, "key": key, "payload": text}
            self._replace(conn, results, [{**row, "updated_at": now}])

    def add_note(self, trace_id: str, note: dict[str, Any]) -> int:
        with self.engine.begin() as conn:
            self._require(conn, trace_id)
            return conn.execute(
                notes.insert(), {"trace_id": trace_id, **note}
            ).inserted_primary_key[0]

    def delete_note(self, note_id: int) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(notes.delete().where(notes.c.note_id == note_id)).rowcount > 0

    def note_summaries(self, trace_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Per trace that has notes: how many, and the newest note's text; one query."""
        if not trace_ids:
            return {}
        counted = (
            sa.select(
                notes.c.trace_id,
                sa.func.count().label("n"),
                sa.func.max(notes.c.note_id).label("newest"),
            )
            .where(notes.c.trace_id.in_(list(trace_ids)))
            .group_by(notes.c.trace_id)
            .subquery()
        )
        stmt = sa.select(counted.c.trace_id, counted.c.n, notes.c.text).join(
            notes, notes.c.note_id == counted.c.newest
        )
        with self.engine.connect() as conn:
            return {tid: (int(n), text) for tid, n, text in conn.execute(stmt)}

    def notes(self, trace_id: str) -> list[dict[str, Any]]:
        stmt = sa.select(notes).where(notes.c.trace_id == trace_id).order_by(notes.c.note_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    # -- reading -----------------------------------------------------------------------------
    def exists(self, trace_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(_EXISTS, {"tid": trace_id}).first() is not None

    def get(self, trace_id: str) -> TraceInfo:
        with self.engine.connect() as conn:
            infos = self._infos(conn, [trace_id])
        if not infos:
            raise TraceNotFound(f"no trace {trace_id} in this store")
        return infos[0]

    def _infos(self, conn: Connection, ids: list[str]) -> list[TraceInfo]:
        """TraceInfo for ``ids`` in that order; tags and metrics come from their tables."""
        if not ids:
            return []
        data: dict[str, dict[str, Any]] = {}
        tag_map: dict[str, list[str]] = {}
        metric_map: dict[str, dict[str, float]] = {}
        for tid, kind, text, value in self._info_rows(conn, ids):
            if kind == "i":
                data[tid] = json.loads(text)
            elif kind == "t":
                tag_map.setdefault(tid, []).append(text)
            else:
                metric_map.setdefault(tid, {})[text] = value
        out = []
        for tid in ids:
            if tid in data:
                data[tid]["tags"] = sorted(tag_map.get(tid, []))
                data[tid]["metrics"] = metric_map.get(tid, {})
                out.append(TraceInfo.from_dict(data[tid]))
        return out

    def _info_rows(self, conn: Connection, ids: list[str]) -> list[tuple]:
        """Rows of ``_INFOS`` for ``ids``. On SQLite straight through the DB-API cursor: the
        same SQL with positional parameters, 3x faster than SQLAlchemy's expanding IN and
        result rows for a page of 50 (measured 0.3 vs 1.0 ms)."""
        if not self.is_sqlite or len(ids) > 300:  # SQLite allows 999+ parameters; 3 per id
            return list(conn.execute(_INFOS, {"ids": ids}))
        marks = ",".join("?" * len(ids))
        sql = _SQLITE_INFOS.format(ids=marks)
        cursor = conn.connection.driver_connection.cursor()
        try:
            return cursor.execute(sql, (*ids, *ids, *ids)).fetchall()
        finally:
            cursor.close()

    def _text_filter(
        self, text: str, columns: tuple[str, ...], use_fts: bool
    ) -> sa.ColumnElement[bool]:
        """Case-insensitive substring match on prompt and/or answer.

        With FTS5 trigram a phrase MATCH is an indexed substring search (3+ characters);
        otherwise, for shorter text, or when ``use_fts`` is False, a case-insensitive LIKE.
        """
        if use_fts and len(text) >= 3:
            phrase = '"' + text.replace('"', '""') + '"'
            expr = ("{" + " ".join(columns) + "}: " if len(columns) < 2 else "") + phrase
            sub = (
                sa.select(sa.literal_column("rowid"))
                .select_from(sa.table(_FTS))
                .where(sa.literal_column(_FTS).op("MATCH")(sa.bindparam("fts", expr, unique=True)))
            )
            return sa.literal_column("traces.rowid").in_(sub)
        return sa.or_(*(traces.c[c].icontains(text, autoescape=True) for c in columns))

    def conditions(
        self, conn: Connection, q: TraceQuery
    ) -> tuple[list[sa.ColumnElement[bool]], int | None]:
        """The conditions of ``q``, and (when it was counted to choose how to search text)
        how many rows the non-text filters leave: an upper bound on the matches."""
        t = traces.c
        candidates = None
        conds: list[sa.ColumnElement[bool]] = []
        if q.model is not None:
            conds.append(t.model_id == q.model)
        if q.model_revision is not None:
            conds.append(t.model_revision == q.model_revision)
        if q.revision_contains:
            conds.append(t.model_revision.icontains(q.revision_contains, autoescape=True))
        if q.correct is not None:
            conds.append(t.correct == q.correct)
        if q.created_after is not None:
            conds.append(t.created_at >= normalize_time(q.created_after))
        if q.created_before is not None:
            conds.append(t.created_at < normalize_time(q.created_before))
        texts = [
            (q.text, ("prompt", "answer")),
            (q.prompt_contains, ("prompt",)),
            (q.answer_contains, ("answer",)),
        ]
        texts = [(text, cols) for text, cols in texts if text]
        if texts:
            candidates = self._candidates(conn, conds) if self.has_fts else None
            use_fts = self.has_fts and (candidates is None or candidates > SCAN_ROWS_LIMIT)
            conds += [self._text_filter(text, cols, use_fts) for text, cols in texts]
        if q.answer_token:
            sub = sa.select(answer_tokens.c.trace_id).where(
                answer_tokens.c.token == normalize_token(q.answer_token)
            )
            conds.append(t.trace_id.in_(sub))
        if q.tag is not None:
            conds.append(t.trace_id.in_(sa.select(tags.c.trace_id).where(tags.c.tag == q.tag)))
        if q.note_contains:
            sub = sa.select(notes.c.trace_id).where(
                notes.c.text.icontains(q.note_contains, autoescape=True)
            )
            conds.append(t.trace_id.in_(sub))
        for name, (lo, hi) in q.metric_ranges.items():
            sub = sa.select(metrics.c.trace_id).where(metrics.c.name == name)
            if lo is not None:
                sub = sub.where(metrics.c.value >= lo)
            if hi is not None:
                sub = sub.where(metrics.c.value <= hi)
            conds.append(t.trace_id.in_(sub))
        return conds, candidates

    def _candidates(self, conn: Connection, conds: list[sa.ColumnElement[bool]]) -> int | None:
        """Rows left by the non-text filters (None: no filters), to choose between FTS and
        scanning those rows: a common word can match most of the index through FTS, while
        model + date already narrow to a few thousand rows on (model_id, created_at);
        scanning those is faster (measured: 47 ms via FTS vs ~1 ms scanning, 100k rows).
        Counting via the index is cheap."""
        if not conds:
            return None
        count = sa.select(sa.func.count()).select_from(traces).where(*conds)
        return conn.execute(count).scalar_one()

    def _order(self, q: TraceQuery) -> sa.ColumnElement[Any]:
        if q.order_by.startswith("metric:"):
            col: sa.ColumnElement[Any] = (
                sa.select(metrics.c.value)
                .where(metrics.c.trace_id == traces.c.trace_id, metrics.c.name == q.order_by[7:])
                .scalar_subquery()
            )
        elif q.order_by in ORDER_COLUMNS:
            col = traces.c[q.order_by]
        else:
            raise ValueError(
                f"cannot order by {q.order_by!r}; use one of {ORDER_COLUMNS} or metric:NAME"
            )
        if self.is_sqlite:  # SQLite's default: NULL sorts below every value
            return col.desc() if q.descending else col.asc()
        # The same order elsewhere (PostgreSQL puts NULL above): a trace without the metric
        # comes last in a descending order on every database.
        return col.desc().nulls_last() if q.descending else col.asc().nulls_first()

    def query(self, q: TraceQuery) -> Page:
        q = _checked(q)
        with self.engine.connect() as conn:
            return self._query(conn, q)

    def _query(self, conn: Connection, q: TraceQuery) -> Page:
        conds, candidates = self.conditions(conn, q)
        ordered = (
            sa.select(traces.c.trace_id).where(*conds).order_by(self._order(q), traces.c.trace_id)
        )
        if candidates is not None and candidates <= ONE_PASS_ROWS:
            # Few candidates (counted above): one scan gives the page and the total, instead
            # of the scan twice (page, then count). Same result; ~0.5 ms less at 100k rows.
            every = list(conn.execute(ordered).scalars())
            ids = every[q.offset : q.offset + q.limit]
            return Page(self._infos(conn, ids), len(every), limit=q.limit, offset=q.offset)
        ids_stmt = ordered.limit(q.limit).offset(q.offset)
        # Two index passes beat one `count(*) OVER ()` pass (measured 0.5 vs 6 ms on SQLite).
        count_stmt = sa.select(sa.func.count()).select_from(traces).where(*conds)
        ids = list(conn.execute(ids_stmt).scalars())
        if len(ids) < q.limit and (ids or q.offset == 0):
            total = q.offset + len(ids)  # the page holds the end of the result: no count needed
        else:
            total = conn.execute(count_stmt).scalar_one()
        items = self._infos(conn, ids)
        return Page(items=items, total=total, limit=q.limit, offset=q.offset)

    def models(self) -> list[str]:
        with self.engine.connect() as conn:
            stmt = sa.select(traces.c.model_id).distinct().order_by(traces.c.model_id)
            return list(conn.execute(stmt).scalars())

    def tags(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(tags.c.tag).distinct().order_by(tags.c.tag)).scalars()
            )

    def file_records(self) -> list[FileRecord]:
        stmt = sa.select(traces.c.trace_id, traces.c.file_size, traces.c.file_checksum)
        with self.engine.connect() as conn:
            return [FileRecord(*row) for row in conn.execute(stmt)]

    def get_result(self, trace_id: str, kind: str, key: str) -> dict | None:
        stmt = sa.select(results.c.payload).where(
            results.c.trace_id == trace_id, results.c.kind == kind, results.c.key == key
        )
        with self.engine.connect() as conn:
            text = conn.execute(stmt).scalar_one_or_none()
        return None if text is None else _payload(text, trace_id, kind, key)

    def list_results(self, trace_id: str, kind: str) -> dict[str, dict]:
        stmt = (
            sa.select(results.c.key, results.c.payload)
            .where(results.c.trace_id == trace_id, results.c.kind == kind)
            .order_by(results.c.key)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(stmt))
        return {key: _payload(text, trace_id, kind, key) for key, text in rows}
