"""The store: a directory of HDF5 trace files plus a SQL index, kept consistent.

Order of operations is what makes it crash-safe: a new trace is written under ``tmp/``,
fsynced, renamed into ``data/`` and the directory fsynced, and only then indexed. A crash
at any point leaves either nothing visible or an unindexed file that :meth:`gc` removes.
Deleting goes the other way (row first, then file).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import math
import mmap
import os
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

import h5py
import sqlalchemy as sa

from . import _codec, _h5
from ._binding import bind, check_root, read_store_id, shown_url
from ._codec import Precision
from ._failures import READONLY_ERRNOS, guard, reason, translate
from ._index import Index, Page, TraceQuery, drop_tables, make_engine, read_carried
from ._interrupts import interrupts_deferred
from ._paths import (
    DB_FILE,
    OWN_DIRS,
    STORE_ID_FILE,
    Layout,
    check_name,
    check_trace_id,
    fsync_dir,
    is_link,
    setup_lock,
    store_lock,
)
from ._stored import StoredTrace
from .errors import CorruptTrace, InvalidName, StoreError, StoreOpenError, StoreReadOnly
from .schema import Note, Trace, TraceInfo, new_trace_id
from .validation import check_trace

Mode = Literal["r", "a"]


@dataclass
class Problem:
    """One thing :meth:`TraceStore.verify` found wrong.

    kind: ``missing_file`` (row without file), ``checksum_mismatch`` (file changed, or
    found damaged by a reindex), ``wrong_file`` (file of another trace at this row's path),
    ``unreadable_file`` (not a trace), ``orphan_file`` (trace file without row),
    ``temp_leftover`` (interrupted write), ``foreign_file`` (not the store's: left alone),
    ``link`` (a symbolic link inside the store: never followed), ``quarantined`` (a file
    moved aside because it could not be read: kept for inspection).
    """

    kind: str
    path: Path
    trace_id: str | None = None
    detail: str = ""


@dataclass
class GcReport:
    """What :meth:`TraceStore.gc` removed, and what it moved to ``quarantine/`` instead."""

    removed_temp: list[Path] = field(default_factory=list)
    removed_orphans: list[Path] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)
    freed_bytes: int = 0


@dataclass
class ReindexReport:
    """What :func:`reindex_store` did: traces indexed, unreadable files moved to
    ``quarantine/``, and traces indexed with the evidence that they are damaged (their old
    checksum kept, or a failed internal check recorded) so that ``verify`` still reports them.
    ``skipped``: entries under ``data/`` that are not trace files (a symbolic link, a user's
    file), left alone and not indexed; listed so that a trace behind a link is not dropped from
    the index without a word. What was added after recording (edited tags and metrics,
    methods' results, notes, live jobs) is carried over (``carried``: rows per table); rows of
    traces that are not indexed again are kept as JSON in ``set_aside``."""

    indexed: int = 0
    quarantined: list[Path] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    carried: dict[str, int] = field(default_factory=dict)  # table name -> rows put back
    set_aside: Path | None = None  # rows of traces not indexed again, kept as JSON


CHECKSUM = "sha256"
COPY_CHUNK = 8 << 20  # staged files are copied into the store in pieces of this size
WINNER_WAIT_S = 10.0  # how long a writer that lost the race for an id waits for its row
_HASHES = {"sha256": hashlib.sha256, "blake2b-256": lambda: hashlib.blake2b(digest_size=32)}


def _digest_fd(fd: int, size: int, algorithm: str = CHECKSUM) -> str:
    h = _HASHES[algorithm]()
    if size:
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
            h.update(view)  # hashlib drops the GIL on large buffers
    return f"{algorithm}:{h.hexdigest()}"


def checksum_file(path: Path, like: str = CHECKSUM) -> str:
    """``"<algorithm>:<hex>"`` of the file, with the algorithm of the checksum ``like``.

    New files get SHA-256 (SHA-NI: 2.5x BLAKE2b's speed on the dev CPU); files indexed
    before kept their ``blake2b-256`` checksums, which stay verifiable.
    """
    algorithm = like.split(":", 1)[0]
    if algorithm not in _HASHES:
        algorithm = CHECKSUM
    fd = os.open(path, os.O_RDONLY)
    try:
        return _digest_fd(fd, os.fstat(fd).st_size, algorithm)
    finally:
        os.close(fd)


def _write_durably(path: Path, trace: Trace, precision: Precision) -> tuple[str, int]:
    """Write the trace's HDF5 file to the new file ``path`` and fsync it; (checksum, size).

    HDF5 writes straight to the file (a writer thread copies while HDF5 compresses); the
    checksum is computed from the page cache while the fsync waits on the disk.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _h5.write_trace(fd, trace, precision)
        size = os.fstat(fd).st_size
        synced: list[BaseException] = []

        def sync() -> None:
            try:
                os.fsync(fd)
            except BaseException as exc:  # re-raised below, in the caller's thread
                synced.append(exc)

        syncer = threading.Thread(target=sync, name="trace-fsync")
        syncer.start()
        try:
            digest = _digest_fd(fd, size)
        finally:
            syncer.join()
        if synced:
            raise synced[0]
    finally:
        os.close(fd)
    return digest, size


def _staged(staged: Path, tmp: Path, trace: Trace, precision: Precision) -> tuple[str, int]:
    """Write the trace's file at ``staged`` (local disk) with HDF5, then copy its bytes to the
    new file ``tmp`` and fsync it; (checksum of the copy, size). The staged file is removed."""
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        written, size = _write_durably(staged, trace, precision)
        hasher = _HASHES[CHECKSUM]()
        with open(staged, "rb") as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as dst:
                while chunk := src.read(COPY_CHUNK):
                    hasher.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
    finally:
        staged.unlink(missing_ok=True)
    digest = f"{CHECKSUM}:{hasher.hexdigest()}"
    if digest != written:  # the copy is not what HDF5 wrote: never place it
        raise StoreError(f"copying {staged} into the store changed its bytes; nothing added")
    return digest, size


def _normalised(info: TraceInfo) -> TraceInfo:
    """The id in lower case, tags and metric names in NFC (as the index compares them)."""
    return replace(
        info,
        trace_id=check_trace_id(info.trace_id),
        tags=list(dict.fromkeys(check_name(t, "tag") for t in info.tags)),
        metrics={check_name(k, "metric name"): v for k, v in info.metrics.items()},
    )


def _is_own_trace(path: Path, trace_id: str) -> bool:
    """The file is a trace this code can read and it claims the id its name gives."""
    try:
        f = _h5.open_file(str(path))
    except StoreError:
        return False
    try:
        return str(f.attrs.get("trace_id", "")) == trace_id
    except (OSError, KeyError, TypeError):
        return False
    finally:
        f.close()


DAMAGED = "damaged:"  # checksum prefix: reindex found the file failing its internal checks


class TraceStore:
    """A directory of traces. Create with :func:`open_store`; close (or use ``with``) when done."""

    def __init__(
        self,
        directory: str | Path,
        db_url: str | None = None,
        mode: Mode = "a",
        *,
        _rebuilding: bool = False,
    ) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read) or 'a' (read and add), not {mode!r}")
        self.mode: Mode = mode
        self.layout = Layout(Path(directory).absolute())
        root = self.layout.root
        check_root(root)
        if db_url is not None:  # a malformed --db is refused before anything is created
            make_engine(db_url, mode == "a").dispose()
        if mode == "a":
            self._prepare_dirs()
        elif not root.is_dir():
            raise StoreOpenError(f"no store at {root}; record a trace into it first")
        self.db_url = db_url or self._sqlite_url()
        try:
            self._index = self._open_index(db_url is None, _rebuilding)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            error = translate(exc, f"cannot open the index {shown_url(self.db_url)}")
            if type(error) is StoreError:
                error = StoreOpenError(
                    f"{error}. Check --db: the database must exist and be reachable"
                )
            raise error from None

    def _open_index(self, own_sqlite: bool, rebuilding: bool) -> Index:
        writable = self.mode == "a"
        if not writable:
            try:
                index = Index(make_engine(self.db_url, writable), writable)
            except sa.exc.OperationalError:
                if not own_sqlite:
                    raise
                # WAL readers need a writable -shm beside the database; in a read-only
                # directory nothing can change the index, so SQLite may treat it as immutable.
                self.db_url = f"sqlite:///file:{self.layout.db_path}?mode=ro&immutable=1&uri=true"
                index = Index(make_engine(self.db_url, writable), writable)
            bind(index, self.layout, self.db_url, writable, rebuilding)
            return index
        engine = make_engine(self.db_url, writable)
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        if database and os.path.exists(database) and not os.access(database, os.W_OK):
            engine.dispose()
            raise StoreReadOnly(
                f"the index {database} is read-only: the store can only be read here; "
                "fix its permissions to change it"
            )
        try:
            with setup_lock(self.layout):  # two processes creating one index: one at a time
                index = Index(engine, writable)
                bind(index, self.layout, self.db_url, writable, rebuilding)
        except BaseException:
            engine.dispose()
            raise
        return index

    def _prepare_dirs(self) -> None:
        """Create the layout; a probe write tells a read-only directory apart (root too)."""
        lay = self.layout
        _refuse_foreign_folder(lay)
        try:
            lay.root.mkdir(parents=True, exist_ok=True)
            for sub in (lay.data_dir, lay.tmp_dir):
                lay.no_links(sub)
                sub.mkdir(exist_ok=True)
            os.close(os.open(lay.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644))
            probe = lay.tmp_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            if exc.errno in READONLY_ERRNOS:
                raise StoreReadOnly(
                    f"store directory {lay.root} is not writable by this process ({exc.strerror});"
                    " it can only be read (mode 'r'), or fix its permissions"
                ) from None
            if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP):
                raise StoreOpenError(
                    f"cannot use {lay.root} as a store: {exc.filename or lay.root} is not a "
                    f"directory ({exc.strerror})"
                ) from None
            raise translate(exc, f"cannot prepare {lay.root}") from exc

    def _sqlite_url(self) -> str:
        path = self.layout.no_links(self.layout.db_path)
        if self.mode == "r" and not path.exists():
            raise StoreOpenError(f"no index at {path}; is {self.layout.root} a store?")
        return f"sqlite:///{path}"

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._index.engine.dispose()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceStore({str(self.layout.root)!r}, mode={self.mode!r})"

    @property
    def root(self) -> Path:
        return self.layout.root

    def _writable(self) -> None:
        if self.mode != "a":
            raise StoreReadOnly(
                f"store {self.root} was opened read-only; open it with open_store(..., "
                "writable=True) to change it"
            )

    # -- adding ------------------------------------------------------------------------------
    def add(self, trace: Trace, *, lossy: bool | str | Precision = False) -> str:
        """Persist ``trace`` atomically and index it; returns its trace id.

        ``lossy``: False keeps fp16 attention exactly; True (= "log8") or "sparse" trade a
        bounded error for size (see ``store._codec``). An empty ``info.trace_id`` gets a new id.
        An id already stored is an error (see :meth:`add_new` to skip it instead).
        """
        if not trace.info.trace_id:
            trace = replace(trace, info=replace(trace.info, trace_id=new_trace_id()))
        if not self.add_new(trace, lossy=lossy):
            raise StoreError(
                f"trace {trace.info.trace_id} is already in the store; delete it first"
            )
        return check_trace_id(trace.info.trace_id)

    def add_new(
        self,
        trace: Trace,
        *,
        lossy: bool | str | Precision = False,
        staging_dir: Path | None = None,
    ) -> bool:
        """Add ``trace`` under its own id unless that id is stored: then False, nothing written.

        This is what makes recording idempotent when the id is derived from what was recorded
        (engine/recording.py): writers racing on one id store it once. The file is placed with
        a hard link, which, unlike a rename, never replaces a file already at the final name;
        the writer that loses waits for the winner's row and skips. Only a file left unindexed
        by a killed writer can stand in the way: that is an error naming ``store gc``, never an
        overwrite.

        ``staging_dir``: a folder on local disk. HDF5 then writes (and fsyncs) the file there,
        and only its bytes are copied into the store's ``tmp/``: a store on a network file
        system never sees HDF5's small in-place writes, whose locking and caching such file
        systems do not honour.
        """
        self._writable()
        precision = _codec.resolve(lossy)
        trace = replace(trace, info=_normalised(trace.info))
        trace_id = trace.info.trace_id
        check_trace(trace)
        if self._stored(trace_id):
            return False
        lay = self.layout
        final, tmp = lay.no_links(lay.trace_path(trace_id)), lay.no_links(lay.temp_path(trace_id))
        with interrupts_deferred(), store_lock(lay, exclusive=False):
            try:
                if staging_dir is None:
                    digest, size = _write_durably(tmp, trace, precision)
                else:
                    digest, size = _staged(Path(staging_dir) / tmp.name, tmp, trace, precision)
                new_dir = not final.parent.exists()
                final.parent.mkdir(exist_ok=True)
                placed = _place(tmp, final)
                if placed:
                    fsync_dir(final.parent)
                    if new_dir:
                        fsync_dir(lay.data_dir)
            except BaseException as exc:
                tmp.unlink(missing_ok=True)
                raise translate(exc, f"adding trace {trace_id}") from exc
            if not placed:
                if self._winner_indexed(trace_id):
                    return False
                raise StoreError(
                    f"an unindexed file of trace {trace_id} is in the way at {final}: another "
                    "process is adding it, or an interrupted add left it; run `lvlm-interpret "
                    "store gc` when no recording is running"
                )
            try:
                indexed = self._index.insert(
                    trace.info,
                    precision=precision.value,
                    shape=trace.lm_attention.shape[:2],
                    prompt_length=trace.tokens.prompt_length,
                    answer_tokens_text=trace.tokens.text[trace.tokens.prompt_length :],
                    file_size=size,
                    file_checksum=digest,
                )
            except BaseException as exc:
                final.unlink(missing_ok=True)
                raise translate(exc, f"indexing trace {trace_id}") from exc
        return indexed  # False: a row for this id appeared meanwhile (its file now placed)

    def _stored(self, trace_id: str) -> bool:
        with guard(f"adding trace {trace_id}"):
            return self._index.exists(trace_id)

    def _winner_indexed(self, trace_id: str) -> bool:
        """Whether the writer that placed this id's file first indexes it within a few
        seconds: between placing and indexing it only inserts one row, so a file that stays
        unindexed longer was left by a killed writer."""
        deadline = time.monotonic() + WINNER_WAIT_S
        while not self._stored(trace_id):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- reading -----------------------------------------------------------------------------
    def query(self, q: TraceQuery | None = None) -> Page:
        """Traces matching ``q`` (all when None), newest first by default, one page at a time."""
        with guard("searching the index"):
            return self._index.query(q or TraceQuery())

    def get(self, trace_id: str) -> TraceInfo:
        trace_id = check_trace_id(trace_id)
        with guard(f"reading trace {trace_id} from the index"):
            return self._index.get(trace_id)

    def __contains__(self, trace_id: object) -> bool:
        if not isinstance(trace_id, str):
            return False
        trace_id = check_trace_id(trace_id)
        with guard(f"looking up trace {trace_id} in the index"):
            return self._index.exists(trace_id)

    def open(self, trace_id: str) -> StoredTrace:
        """Open a trace lazily (read-only); close it or use ``with``."""
        info = self.get(trace_id)
        return StoredTrace(self.layout.no_links(self.layout.trace_path(info.trace_id)), info=info)

    def schema_version(self) -> int:
        """The index's schema version (``lvi_meta``; Alembic revision ``NNNN``)."""
        with guard("reading the index"):
            return self._index.schema_version()

    def models(self) -> list[str]:
        with guard("reading the index"):
            return self._index.models()

    def tags(self) -> list[str]:
        with guard("reading the index"):
            return self._index.tags()

    # -- editing the index -------------------------------------------------------------------
    def delete(self, trace_id: str) -> None:
        """Remove a trace: its row first (it disappears at once), then its file."""
        self._writable()
        trace_id = check_trace_id(trace_id)
        path = self.layout.no_links(self.layout.trace_path(trace_id))
        with guard(f"deleting trace {trace_id}"):
            self._index.delete(trace_id)
            path.unlink(missing_ok=True)
            if path.parent.exists():
                fsync_dir(path.parent)

    def _edit(self, what: str, trace_id: str, change: Callable[[str], None]) -> None:
        self._writable()
        trace_id = check_trace_id(trace_id)
        with guard(f"{what} trace {trace_id}"):
            change(trace_id)

    def tag(self, trace_id: str, *tags: str) -> None:
        names = [check_name(t, "tag") for t in tags]
        self._edit("tagging", trace_id, lambda tid: self._index.add_tags(tid, names))

    def untag(self, trace_id: str, *tags: str) -> None:
        names = [check_name(t, "tag") for t in tags]
        self._edit("untagging", trace_id, lambda tid: self._index.remove_tags(tid, names))

    def set_metrics(self, trace_id: str, metrics: dict[str, float]) -> None:
        values = {check_name(k, "metric name"): float(v) for k, v in metrics.items()}
        self._edit("setting metrics of", trace_id, lambda t: self._index.set_metrics(t, values))

    # -- analysts' notes ---------------------------------------------------------------------
    def add_note(
        self,
        trace_id: str,
        text: str,
        *,
        token_position: int | None = None,
        region: tuple[int, Sequence[float]] | None = None,
        author: str | None = None,
    ) -> Note:
        """Attach a note to a trace (or to one of its tokens, or a box on one of its images).

        The text is kept verbatim (it is shown escaped, never rendered as Markdown)."""
        self._writable()
        trace_id = check_trace_id(trace_id)
        note = _note_row(text, token_position, region, author)
        with guard(f"adding a note to trace {trace_id}"):
            note_id = self._index.add_note(trace_id, note)
        return _note(
            {**note, "note_id": note_id, "trace_id": trace_id},
        )

    def notes(self, trace_id: str) -> list[Note]:
        """The notes on a trace, oldest first."""
        trace_id = check_trace_id(trace_id)
        with guard("reading notes"):
            return [_note(row) for row in self._index.notes(trace_id)]

    def note_summaries(self, trace_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """``{trace_id: (number of notes, newest note's text)}`` for the traces that have
        notes, in one query (a table of traces shows a notes column without a query per row)."""
        ids = [check_trace_id(t) for t in trace_ids]
        with guard("reading notes"):
            return self._index.note_summaries(ids)

    def delete_note(self, note_id: int) -> None:
        """Remove one note (:class:`KeyError` if there is no such note)."""
        self._writable()
        if isinstance(note_id, bool) or not isinstance(note_id, int):
            raise TypeError(f"a note id is an integer, not {note_id!r}")
        with guard(f"deleting note {note_id}"):
            if not self._index.delete_note(note_id):
                raise KeyError(f"no note {note_id} in this store")

    # -- derived results (e.g. causal explanations computed on demand) -----------------------
    def put_result(self, trace_id: str, kind: str, key: str, payload: dict) -> None:
        """Store (or replace) a JSON payload under (trace, kind, key)."""
        if not isinstance(payload, dict):
            raise TypeError("payload must be a JSON-serialisable dict")
        kind, key = check_name(kind, "result kind"), check_name(key, "result key")
        self._edit(
            "storing a result of", trace_id, lambda t: self._index.put_result(t, kind, key, payload)
        )

    def get_result(self, trace_id: str, kind: str, key: str) -> dict | None:
        kind, key = check_name(kind, "result kind"), check_name(key, "result key")
        with guard("reading a result"):
            return self._index.get_result(check_trace_id(trace_id), kind, key)

    def list_results(self, trace_id: str, kind: str) -> dict[str, dict]:
        """Every stored result of one kind for a trace, as {key: payload}."""
        with guard("reading results"):
            return self._index.list_results(check_trace_id(trace_id), check_name(kind, "kind"))

    # -- maintenance -------------------------------------------------------------------------
    def export(self, trace_id: str, dest_dir: str | Path) -> Path:
        """Copy the trace's HDF5 file to ``dest_dir`` plus ``<id>.json`` with its info.

        Never overwrites (an existing file, or a link planted at either name, is an error)
        and never writes inside the store itself.
        """
        info = self.get(trace_id)
        trace_id = info.trace_id
        src = self.layout.no_links(self.layout.trace_path(trace_id))
        dest = Path(dest_dir).absolute()
        real_root, real_dest = self.root.resolve(), dest.resolve()
        if real_dest == real_root or real_root in real_dest.parents:
            raise StoreError(f"cannot export into the store itself ({dest}); choose another folder")
        with guard(f"exporting trace {trace_id} to {dest}"):
            if dest.exists() and not dest.is_dir():
                raise StoreError(f"{dest} is a file; export needs a folder")
            dest.mkdir(parents=True, exist_ok=True)
            out, meta = dest / src.name, dest / f"{trace_id}.json"
            for path in (out, meta):
                if path.exists() or is_link(path):
                    raise StoreError(f"{path} already exists; export never overwrites a file")
            try:
                source = open(src, "rb", opener=_no_follow)  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise CorruptTrace(
                    f"trace file {src} is missing; run `lvlm-interpret store verify`"
                ) from None
            with source:
                _write_new(out, lambda f: shutil.copyfileobj(source, f))
            text = json.dumps(info.to_dict(), indent=2).encode()
            _write_new(meta, lambda f: f.write(text))
        return out

    def _snapshot(
        self,
    ) -> tuple[dict[str, tuple[int, str]], list[tuple[str | None, Path]], list[Path]]:
        """Rows, data files and temp files, read together while no writer is mid-add."""
        with guard("reading the index"):
            if self.mode == "a":
                with store_lock(self.layout, exclusive=True):
                    rows = {
                        r.trace_id: (r.file_size, r.file_checksum)
                        for r in self._index.file_records()
                    }
                    return rows, list(self.layout.trace_files()), self.layout.temp_files()
            rows = {r.trace_id: (r.file_size, r.file_checksum) for r in self._index.file_records()}
            return rows, list(self.layout.trace_files()), self.layout.temp_files()

    def verify(self) -> list[Problem]:
        """Check every indexed file against its checksum, and every file against the index."""
        rows, files, temps = self._snapshot()
        lay = self.layout
        problems = [
            Problem("link", d, None, "a symbolic link inside the store: never followed")
            for d in (lay.data_dir, lay.tmp_dir, lay.quarantine_dir)
            if is_link(d)
        ]
        on_disk = {tid for tid, _ in files if tid is not None}
        for trace_id, (size, digest) in sorted(rows.items()):
            path = lay.trace_path(trace_id)
            try:
                lay.no_links(path)
            except StoreError as exc:
                problems.append(Problem("link", path, trace_id, str(exc)))
                continue
            if trace_id not in on_disk:
                problems.append(Problem("missing_file", path, trace_id, "indexed but no file"))
            elif digest.startswith(DAMAGED):
                problems.append(
                    Problem("checksum_mismatch", path, trace_id, "found damaged by a reindex")
                )
            elif path.stat().st_size != size or checksum_file(path, digest) != digest:
                problems.append(self._diagnose(path, trace_id))
        for tid, path in files:
            if is_link(path):
                problems.append(Problem("link", path, None, "a symbolic link: never followed"))
            elif tid is None:
                problems.append(Problem("foreign_file", path, None, "not a trace: left alone"))
            elif tid not in rows:
                problems.append(Problem("orphan_file", path, tid, "file without index row"))
        problems += [Problem("temp_leftover", p, None, "interrupted write") for p in temps]
        if lay.quarantine_dir.is_dir() and not is_link(lay.quarantine_dir):
            problems += [
                Problem("quarantined", p, None, "unreadable; kept for you to inspect or delete")
                for p in sorted(lay.quarantine_dir.iterdir())
            ]
        return problems

    @staticmethod
    def _diagnose(path: Path, trace_id: str) -> Problem:
        try:
            with h5py.File(path, "r") as f:
                claimed = str(f.attrs.get("trace_id", ""))
        except OSError:
            return Problem("unreadable_file", path, trace_id, "not an HDF5 file")
        if claimed != trace_id:
            return Problem("wrong_file", path, trace_id, f"file holds trace {claimed or '?'}")
        return Problem("checksum_mismatch", path, trace_id, "contents changed since recording")

    def gc(self) -> GcReport:
        """Remove temp leftovers of interrupted writes and trace files no index row points at.

        Only files this code made: temp files by their name in a real ``tmp/``, trace files
        at their own path that open as the trace their name says. A file there that cannot
        be read is moved to ``quarantine/``; anything else (a user's notes, links) is left
        alone, and no link is followed.
        """
        self._writable()
        report = GcReport()
        lay = self.layout
        with guard(f"collecting garbage in {lay.root}"), store_lock(lay, exclusive=True):
            indexed = {r.trace_id for r in self._index.file_records()}
            for path in lay.temp_files():
                report.freed_bytes += path.lstat().st_size
                path.unlink()
                report.removed_temp.append(path)
            for tid, path in list(lay.trace_files()):
                if tid is None or tid in indexed:
                    continue
                if _is_own_trace(path, tid):
                    report.freed_bytes += path.lstat().st_size
                    path.unlink()
                    report.removed_orphans.append(path)
                else:
                    report.quarantined.append(lay.quarantine(path))
            if lay.data_dir.is_dir() and not is_link(lay.data_dir):
                for entry in os.scandir(lay.data_dir):
                    if entry.is_dir(follow_symlinks=False) and not any(os.scandir(entry.path)):
                        os.rmdir(entry.path)
        return report

    def _restore_carried(
        self, rows: dict[str, list[dict]], known: Collection[str]
    ) -> tuple[dict[str, int], Path | None]:
        """Put the old index's added rows back on the traces indexed again (``known``: the
        traces the old index had); rows of traces that are not (file gone or quarantined)
        go to ``quarantine/index-rows-<n>.json``, as JSON, never dropped. Jobs stay whole:
        a queued question does not depend on a trace. (Rows put back per table, where the
        others went.)"""
        indexed = {r.trace_id for r in self._index.file_records()}

        def kept(table: str, row: dict) -> bool:
            return table == "jobs" or row["trace_id"] in indexed

        back = {t: [r for r in table_rows if kept(t, r)] for t, table_rows in rows.items()}
        self._index.restore_carried(back, [t for t in known if t in indexed])
        orphans = {t: [r for r in table_rows if not kept(t, r)] for t, table_rows in rows.items()}
        carried = {t: len(r) for t, r in back.items() if r}
        if not any(orphans.values()):
            return carried, None
        lay = self.layout
        lay.no_links(lay.quarantine_dir)
        lay.quarantine_dir.mkdir(exist_ok=True)
        n = 1
        while (path := lay.quarantine_dir / f"index-rows-{n}.json").exists() or is_link(path):
            n += 1
        text = json.dumps({t: r for t, r in orphans.items() if r}, indent=2, ensure_ascii=False)
        _write_new(path, lambda f: f.write(text.encode()))
        return carried, path

    def _reindex(self, old: dict[str, str]) -> ReindexReport:
        """Index every trace file under ``data/`` (for :func:`reindex_store`).

        ``old`` holds the checksums the previous index recorded: a file that no longer
        matches keeps its old checksum, so ``verify`` keeps reporting it. A file without one
        is checked block by block. Files that cannot be read go to ``quarantine/``.
        """
        report = ReindexReport()
        for tid, path in self.layout.trace_files():
            if tid is None:
                report.skipped.append(path)
                continue
            try:
                with StoredTrace(path) as st:
                    if st.trace_id != tid:
                        raise CorruptTrace(f"{path} holds trace {st.trace_id!r}")
                    checksum = checksum_file(path, old.get(tid, CHECKSUM))
                    recorded = old.get(tid)
                    damaged = recorded is not None and recorded != checksum
                    if damaged:  # keep the evidence: verify goes on reporting it
                        checksum = recorded
                    elif recorded is None and st.damage() is not None:
                        checksum, damaged = DAMAGED + checksum, True
                    tokens = st.tokens
                    self._index.insert(
                        _normalised(st.info),
                        precision=st.precision.value,
                        shape=(st.num_layers, st.num_heads),
                        prompt_length=tokens.prompt_length,
                        answer_tokens_text=tokens.text[tokens.prompt_length :],
                        file_size=path.stat().st_size,
                        file_checksum=checksum,
                    )
            except (CorruptTrace, KeyError, ValueError, TypeError):
                # Only a file that cannot be read as its trace; a transient OS error, a full
                # index or a newer format aborts the reindex instead (nothing is moved).
                report.quarantined.append(self.layout.quarantine(path))
                continue
            report.indexed += 1
            if damaged:
                report.damaged.append(tid)
        return report


def _refuse_foreign_folder(layout: Layout) -> None:
    """A store is made only in a new or empty folder: `--store ""` (the working directory) or
    a mistyped path to a project or home folder must not gain a store's files."""
    root = layout.root
    if is_link(layout.data_dir) or layout.data_dir.is_dir() or not root.is_dir():
        return
    own = {*OWN_DIRS, layout.lock_path.name, STORE_ID_FILE}
    prefixes = (DB_FILE, f".{STORE_ID_FILE}-")  # the index and its -wal/-shm; id being written
    try:  # a store's own names are another process creating the same store right now
        foreign = [
            p for p in root.iterdir() if p.name not in own and not p.name.startswith(prefixes)
        ]
    except OSError:
        return  # the probe write below reports what is wrong with the folder
    if foreign:
        raise StoreOpenError(
            f"{root} is not a store (no data/ folder) and is not empty: give a new or empty "
            "folder to create a store in"
        )


MAX_NOTE_LENGTH = 20_000


def _note_row(
    text: object,
    token_position: int | None,
    region: tuple[int, Sequence[float]] | None,
    author: str | None,
) -> dict:
    """The index row of a new note, every field checked (bad input never reaches SQL)."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_NOTE_LENGTH:
        raise InvalidName(f"a note is 1-{MAX_NOTE_LENGTH} characters of text")
    if token_position is not None and (
        isinstance(token_position, bool)
        or not isinstance(token_position, int)
        or token_position < 0
    ):
        raise InvalidName(f"a note's token position is an integer >= 0, not {token_position!r}")
    region_json = None
    if region is not None:
        try:
            image, box = region
            image, box = int(image), [float(v) for v in box]
        except (TypeError, ValueError):
            raise InvalidName(
                f"a note's region is (image, (x0, y0, x1, y1)), not {region!r}"
            ) from None
        if image < 0 or len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise InvalidName(f"a note's region is (image, (x0, y0, x1, y1)), not {region!r}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidName(f"a note's region box {box} is empty (x1 <= x0 or y1 <= y0)")
        region_json = json.dumps({"image": image, "box": box})
    return {
        "text": unicodedata.normalize("NFC", text),
        "token_position": token_position,
        "region_json": region_json,
        "author": None if author is None else check_name(author, "author"),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
    }


def _note(row: dict) -> Note:
    region = None
    if row.get("region_json"):
        data = json.loads(row["region_json"])
        region = (int(data["image"]), tuple(float(v) for v in data["box"]))
    return Note(
        note_id=int(row["note_id"]),
        trace_id=row["trace_id"],
        text=row["text"],
        created_at=row["created_at"],
        token_position=row["token_position"],
        region=region,
        author=row["author"],
    )


def _place(tmp: Path, final: Path) -> bool:
    """Give the written temp file its final name unless a file has it already (False; the
    temp file is removed either way)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _write_new(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Create ``path`` (never over an existing file or link), fill it and fsync it; a
    failure removes what was written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _set_aside_sqlite(db: Path) -> Path | None:
    """Rename an SQLite index (and its -wal/-shm) to ``<name>.bak-<n>``; nothing is deleted."""
    if not db.exists():
        return None
    n = 1
    while (bak := db.with_name(f"{db.name}.bak-{n}")).exists():
        n += 1
    for suffix in ("", "-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            os.replace(side, bak.with_name(bak.name + suffix))
    return bak


def _old_rows(url: str, required: bool) -> dict[str, list[dict]]:
    """The rows a reindex carries over (:data:`CARRIED`) from the index it replaces.
    ``required`` (an index that is dropped, not set aside as a .bak): a failure to read them
    stops the reindex before anything changes."""
    try:
        engine = make_engine(url, writable=False)
    except StoreError:
        if required:
            raise
        return {}
    try:
        with engine.connect() as conn:
            return read_carried(conn)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        if required:
            raise StoreOpenError(
                f"cannot read the notes and results in {shown_url(url)} ({reason(exc)}); "
                "reindex would lose them, so nothing was changed"
            ) from None
        return {}
    finally:
        engine.dispose()


def _previous(url: str) -> tuple[str | None, dict[str, str]]:
    """The store id and file checksums an existing index holds (nothing if unreadable)."""
    try:
        engine = make_engine(url, writable=False)
    except StoreError:
        return None, {}
    try:
        index = Index(engine, writable=False)
        return index.store_id(), {r.trace_id: r.file_checksum for r in index.file_records()}
    except (StoreError, sa.exc.SQLAlchemyError, OSError):
        return None, {}
    finally:
        engine.dispose()


def reindex_store(directory: str | Path, db_url: str | None = None) -> ReindexReport:
    """Rebuild the index from the trace files.

    For the default SQLite index the old file is kept as ``index.sqlite.bak-<n>``; for
    another URL the store's tables are dropped and recreated. Either way what was added
    after recording (tags and metrics as last edited, methods' results, notes, live jobs) is
    read from the old index first and put back (:data:`store._index.CARRIED`). Checksums of
    the old index are carried over for files that no longer match them, files that cannot
    be read are moved to ``quarantine/``; nothing is deleted.
    """
    layout = Layout(Path(directory).absolute())
    check_root(layout.root)
    if is_link(layout.data_dir) or not layout.data_dir.is_dir():
        raise StoreOpenError(f"no store at {layout.root} (no data/ directory)")
    with store_lock(layout, exclusive=True):
        url = db_url or f"sqlite:///{layout.no_links(layout.db_path)}"
        index_id, old = _previous(url)
        old_rows = _old_rows(url, required=db_url is not None)
        dir_id = read_store_id(layout)
        if index_id is not None and dir_id is not None and index_id != dir_id:
            raise StoreOpenError(
                f"the index {shown_url(url)} belongs to another store (id {index_id}); "
                "reindex will not overwrite it"
            )
        if db_url is None:
            _set_aside_sqlite(layout.db_path)
        else:
            engine = make_engine(db_url, writable=True)
            try:
                with guard(f"clearing the index {shown_url(db_url)}"), engine.begin() as conn:
                    drop_tables(conn)
            except StoreError as exc:
                raise StoreOpenError(str(exc)) from None
            finally:
                engine.dispose()
        with (
            TraceStore(directory, db_url=db_url, mode="a", _rebuilding=True) as store,
            guard(f"reindexing {layout.root}"),
        ):
            report = store._reindex(old)
            report.carried, report.set_aside = store._restore_carried(old_rows, old)
            return report


def open_store(
    directory: str | Path, db_url: str | None = None, *, writable: bool = False
) -> TraceStore:
    """Open the store in ``directory`` to read it, or with ``writable=True`` to add and edit
    (creating it if needed).

    Read-only is the default so that viewers and reports can never change a store by
    accident: every write on it raises :class:`StoreReadOnly`. ``db_url``: any SQLAlchemy URL
    for the index; default is ``index.sqlite`` inside the directory. Every problem with the
    directory or the URL raises :class:`StoreOpenError` (or :class:`StoreReadOnly`,
    :class:`FormatTooNew`, :class:`IndexSchemaTooOld`); all are :class:`StoreError`.
    """
    return TraceStore(directory, db_url=db_url, mode="a" if writable else "r")
