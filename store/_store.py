"""The store: a directory of HDF5 trace files plus a SQL index, kept consistent.

Order of operations is what makes it crash-safe: a new trace is written under ``tmp/``,
fsynced, renamed into ``data/`` and the directory fsynced, and only then indexed. A crash
at any point leaves either nothing visible or an unindexed file that :meth:`gc` removes.
Deleting goes the other way (row first, then file).
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import sqlalchemy as sa

from . import _codec, _h5
from ._codec import Precision
from ._index import Index, Page, TraceQuery, make_engine
from ._index import metadata as _index_metadata
from ._paths import Layout, check_name, check_trace_id, fsync_dir, store_lock
from ._stored import StoredTrace
from .errors import CorruptTrace, StoreError, StoreFull, StoreReadOnly
from .schema import Trace, TraceInfo, new_trace_id

Mode = Literal["r", "a"]
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass
class Problem:
    """One thing :meth:`TraceStore.verify` found wrong.

    kind: ``missing_file`` (row without file), ``checksum_mismatch`` (file changed),
    ``wrong_file`` (file of another trace at this row's path), ``unreadable_file`` (not a
    trace), ``orphan_file`` (file without row), ``temp_leftover`` (interrupted write).
    """

    kind: str
    path: Path
    trace_id: str | None = None
    detail: str = ""


@dataclass
class GcReport:
    """What :meth:`TraceStore.gc` removed."""

    removed_temp: list[Path] = field(default_factory=list)
    removed_orphans: list[Path] = field(default_factory=list)
    freed_bytes: int = 0


CHECKSUM = "sha256"
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


def _is_full(exc: BaseException) -> bool:
    """Out-of-space errors arrive as OSError errnos, or as text from HDF5 / SQLite."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "file too large", "disk is full", "quota"))


def _translate(exc: BaseException, what: str) -> BaseException:
    if _is_full(exc):
        return StoreFull(
            f"{what}: out of disk space ({exc}); nothing was added. Free space and retry"
        )
    if isinstance(exc, OSError) and exc.errno in _READONLY_ERRNOS:
        return StoreReadOnly(f"{what}: {exc}. Open the store with mode='r' or fix permissions")
    return exc


def _check_trace(trace: Trace) -> None:
    """Reject traces whose arrays disagree with each other, before anything is written."""
    att = (
        np.asarray(trace.lm_attention)
        if not hasattr(trace.lm_attention, "shape")
        else trace.lm_attention
    )
    t = len(trace.tokens.text)
    if att.ndim != 4 or att.shape[2] != t or att.shape[3] != t:
        raise ValueError(f"lm_attention must be [L, H, T, T] with T={t} tokens, got {att.shape}")
    if not 0 < trace.tokens.prompt_length <= t:
        raise ValueError(f"prompt_length {trace.tokens.prompt_length} outside 1..{t}")
    for name, arr in (
        ("ids", trace.tokens.ids),
        ("roles", trace.tokens.roles),
        ("word_ids", trace.tokens.word_ids),
        ("image_patch", trace.tokens.image_patch),
    ):
        if len(arr) != t:
            raise ValueError(f"tokens.{name} has {len(arr)} entries, expected {t}")
    vis = trace.vision_attention
    if vis is not None and (vis.ndim != 4 or vis.shape[2] != vis.shape[3]):
        raise ValueError(f"vision_attention must be [Lv, Hv, V, V], got {vis.shape}")
    for tag in trace.info.tags:
        check_name(tag, "tag")
    for name in trace.info.metrics:
        check_name(name, "metric name")


class TraceStore:
    """A directory of traces. Create with :func:`open_store`; close (or use ``with``) when done."""

    def __init__(self, directory: str | Path, db_url: str | None = None, mode: Mode = "a") -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read) or 'a' (read and add), not {mode!r}")
        self.mode: Mode = mode
        self.layout = Layout(Path(directory).absolute())
        root = self.layout.root
        if mode == "a":
            self._prepare_dirs()
        elif not root.is_dir():
            raise StoreError(
                f"no store at {root}; create one with open_store({str(root)!r}, mode='a')"
            )
        self.db_url = db_url or self._sqlite_url()
        writable = mode == "a"
        try:
            try:
                self._index = Index(make_engine(self.db_url, writable), writable)
            except sa.exc.OperationalError:
                if writable or db_url is not None:
                    raise
                # WAL readers need a writable -shm beside the database; in a read-only
                # directory nothing can change the index, so SQLite may treat it as immutable.
                self.db_url = f"sqlite:///file:{self.layout.db_path}?mode=ro&immutable=1&uri=true"
                self._index = Index(make_engine(self.db_url, writable), writable)
        except sa.exc.OperationalError as exc:
            raise _translate(exc.orig or exc, f"cannot open index {self.db_url}") from exc

    def _prepare_dirs(self) -> None:
        """Create the layout; a probe write tells a read-only directory apart (root too)."""
        lay = self.layout
        try:
            lay.root.mkdir(parents=True, exist_ok=True)
            lay.data_dir.mkdir(exist_ok=True)
            lay.tmp_dir.mkdir(exist_ok=True)
            os.close(os.open(lay.lock_path, os.O_RDWR | os.O_CREAT, 0o644))
            probe = lay.tmp_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            if exc.errno in _READONLY_ERRNOS:
                raise StoreReadOnly(
                    f"store directory {lay.root} is not writable by this process ({exc.strerror});"
                    " open it with mode='r' to read, or fix its permissions"
                ) from None
            raise _translate(exc, f"cannot prepare {lay.root}") from exc

    def _sqlite_url(self) -> str:
        path = self.layout.db_path
        if self.mode == "r" and not path.exists():
            raise StoreError(f"no index at {path}; is {self.layout.root} a store?")
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
            raise StoreReadOnly(f"store {self.root} was opened with mode='r'; reopen with mode='a'")

    # -- adding ------------------------------------------------------------------------------
    def add(self, trace: Trace, *, lossy: bool | str | Precision = False) -> str:
        """Persist ``trace`` atomically and index it; returns its trace id.

        ``lossy``: False keeps fp16 attention exactly; True (= "log8") or "sparse" trade a
        bounded error for size (see ``store._codec``). An empty ``info.trace_id`` gets a new id.
        """
        self._writable()
        precision = _codec.resolve(lossy)
        if not trace.info.trace_id:
            trace = replace(trace, info=replace(trace.info, trace_id=new_trace_id()))
        trace_id = check_trace_id(trace.info.trace_id)
        _check_trace(trace)
        if self._index.exists(trace_id):
            raise StoreError(f"trace {trace_id} is already in the store; delete it first")
        lay = self.layout
        final, tmp = lay.trace_path(trace_id), lay.temp_path(trace_id)
        with store_lock(lay, exclusive=False):
            try:
                digest, size = _write_durably(tmp, trace, precision)
                new_dir = not final.parent.exists()
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
                fsync_dir(final.parent)
                if new_dir:
                    fsync_dir(lay.data_dir)
            except BaseException as exc:
                tmp.unlink(missing_ok=True)
                raise _translate(exc, f"adding trace {trace_id}") from exc
            try:
                self._index.insert(
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
                cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig else exc
                raise _translate(cause, f"indexing trace {trace_id}") from exc
        return trace_id

    # -- reading -----------------------------------------------------------------------------
    def query(self, q: TraceQuery | None = None) -> Page:
        """Traces matching ``q`` (all when None), newest first by default, one page at a time."""
        return self._index.query(q or TraceQuery())

    def get(self, trace_id: str) -> TraceInfo:
        return self._index.get(check_trace_id(trace_id))

    def __contains__(self, trace_id: object) -> bool:
        return isinstance(trace_id, str) and self._index.exists(check_trace_id(trace_id))

    def open(self, trace_id: str) -> StoredTrace:
        """Open a trace lazily (read-only); close it or use ``with``."""
        info = self.get(trace_id)
        return StoredTrace(self.layout.trace_path(trace_id), info=info)

    def models(self) -> list[str]:
        return self._index.models()

    def tags(self) -> list[str]:
        return self._index.tags()

    # -- editing the index -------------------------------------------------------------------
    def delete(self, trace_id: str) -> None:
        """Remove a trace: its row first (it disappears at once), then its file."""
        self._writable()
        check_trace_id(trace_id)
        self._index.delete(trace_id)
        path = self.layout.trace_path(trace_id)
        path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_dir(path.parent)

    def tag(self, trace_id: str, *tags: str) -> None:
        self._writable()
        self._index.add_tags(check_trace_id(trace_id), [check_name(t, "tag") for t in tags])

    def untag(self, trace_id: str, *tags: str) -> None:
        self._writable()
        self._index.remove_tags(check_trace_id(trace_id), [check_name(t, "tag") for t in tags])

    def set_metrics(self, trace_id: str, metrics: dict[str, float]) -> None:
        self._writable()
        values = {check_name(k, "metric name"): float(v) for k, v in metrics.items()}
        self._index.set_metrics(check_trace_id(trace_id), values)

    # -- derived results (e.g. causal explanations computed on demand) -----------------------
    def put_result(self, trace_id: str, kind: str, key: str, payload: dict) -> None:
        """Store (or replace) a JSON payload under (trace, kind, key)."""
        self._writable()
        if not isinstance(payload, dict):
            raise TypeError("payload must be a JSON-serialisable dict")
        self._index.put_result(
            check_trace_id(trace_id),
            check_name(kind, "result kind"),
            check_name(key, "result key"),
            payload,
        )

    def get_result(self, trace_id: str, kind: str, key: str) -> dict | None:
        return self._index.get_result(check_trace_id(trace_id), kind, key)

    def list_results(self, trace_id: str, kind: str) -> dict[str, dict]:
        """Every stored result of one kind for a trace, as {key: payload}."""
        return self._index.list_results(check_trace_id(trace_id), kind)

    # -- maintenance -------------------------------------------------------------------------
    def export(self, trace_id: str, dest_dir: str | Path) -> Path:
        """Copy the trace's HDF5 file to ``dest_dir`` plus ``<id>.json`` with its info."""
        info = self.get(trace_id)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        src = self.layout.trace_path(trace_id)
        if not src.exists():
            raise CorruptTrace(f"trace file {src} is missing; run `lvlm-interpret store verify`")
        out = dest / src.name
        shutil.copyfile(src, out)
        (dest / f"{trace_id}.json").write_text(json.dumps(info.to_dict(), indent=2))
        return out

    def _snapshot(
        self,
    ) -> tuple[dict[str, tuple[int, str]], list[tuple[str | None, Path]], list[Path]]:
        """Rows, data files and temp files, read together while no writer is mid-add."""
        if self.mode == "a":
            with store_lock(self.layout, exclusive=True):
                rows = {
                    r.trace_id: (r.file_size, r.file_checksum) for r in self._index.file_records()
                }
                return rows, list(self.layout.trace_files()), self.layout.temp_files()
        rows = {r.trace_id: (r.file_size, r.file_checksum) for r in self._index.file_records()}
        return rows, list(self.layout.trace_files()), self.layout.temp_files()

    def verify(self) -> list[Problem]:
        """Check every indexed file against its checksum, and every file against the index."""
        rows, files, temps = self._snapshot()
        problems: list[Problem] = []
        on_disk = {tid for tid, _ in files if tid is not None}
        for trace_id, (size, digest) in sorted(rows.items()):
            path = self.layout.trace_path(trace_id)
            if trace_id not in on_disk:
                problems.append(Problem("missing_file", path, trace_id, "indexed but no file"))
                continue
            if path.stat().st_size == size and checksum_file(path, digest) == digest:
                continue
            problems.append(self._diagnose(path, trace_id))
        for tid, path in files:
            if tid is None or tid not in rows:
                problems.append(Problem("orphan_file", path, tid, "file without index row"))
        problems += [Problem("temp_leftover", p, None, "interrupted write") for p in temps]
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
        """Remove temp leftovers of interrupted writes and files no index row points at."""
        self._writable()
        report = GcReport()
        with store_lock(self.layout, exclusive=True):
            indexed = {r.trace_id for r in self._index.file_records()}
            report.removed_temp = self.layout.temp_files()
            report.removed_orphans = [
                p for tid, p in self.layout.trace_files() if tid is None or tid not in indexed
            ]
            for path in report.removed_temp + report.removed_orphans:
                report.freed_bytes += path.stat().st_size
                path.unlink()
            for sub in self.layout.data_dir.iterdir():
                if sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
        return report

    def _index_files(self) -> int:
        """Index every readable trace file under ``data/`` (used by :func:`reindex_store`)."""
        count = 0
        for tid, path in self.layout.trace_files():
            if tid is None:
                continue
            try:
                with StoredTrace(path) as st:
                    if st.trace_id != tid:
                        continue
                    tokens = st.tokens
                    self._index.insert(
                        st.info,
                        precision=st.precision.value,
                        shape=(st.num_layers, st.num_heads),
                        prompt_length=tokens.prompt_length,
                        answer_tokens_text=tokens.text[tokens.prompt_length :],
                        file_size=path.stat().st_size,
                        file_checksum=checksum_file(path),
                    )
                    count += 1
            except (CorruptTrace, OSError):
                continue
        return count


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


def reindex_store(directory: str | Path, db_url: str | None = None) -> int:
    """Rebuild the index from the trace files; returns how many traces were indexed.

    For the default SQLite index the old file is kept as ``index.sqlite.bak-<n>`` (tags,
    metrics and results edited after recording are still there); for another URL the
    store's tables are dropped and recreated. Tags and metrics come back as recorded.
    """
    layout = Layout(Path(directory).absolute())
    if not layout.data_dir.is_dir():
        raise StoreError(f"no store at {layout.root} (no data/ directory)")
    with store_lock(layout, exclusive=True):
        if db_url is None:
            _set_aside_sqlite(layout.db_path)
        else:
            engine = make_engine(db_url, writable=True)
            with engine.begin() as conn:
                if engine.dialect.name == "sqlite":
                    conn.exec_driver_sql("DROP TABLE IF EXISTS traces_fts")
                _index_metadata.drop_all(conn)
            engine.dispose()
        with TraceStore(directory, db_url=db_url, mode="a") as store:
            return store._index_files()


def open_store(directory: str | Path, db_url: str | None = None, mode: Mode = "a") -> TraceStore:
    """Open (mode "a": create if needed) the store in ``directory``.

    ``db_url``: any SQLAlchemy URL for the index; default is ``index.sqlite`` inside the
    directory. Mode "r" never writes; "a" reads, adds and edits.
    """
    return TraceStore(directory, db_url=db_url, mode=mode)
