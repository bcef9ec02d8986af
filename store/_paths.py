"""Where things live inside a store directory, and the checks that keep it that way.

Trace ids become file names, so they are validated strictly (32 lowercase hex digits) and
every path is derived from the id, never from user text or the index. Nothing a caller
passes can make the store touch a file outside its directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidName, InvalidTraceId

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_LENGTH = 200
DB_FILE = "index.sqlite"
TRACE_SUFFIX = ".h5"
TEMP_SUFFIX = ".tmp.h5"


def check_trace_id(trace_id: object) -> str:
    """Return ``trace_id`` if it is 32 lowercase hex digits, else raise :class:`InvalidTraceId`."""
    if not isinstance(trace_id, str) or not _TRACE_ID.fullmatch(trace_id):
        raise InvalidTraceId(
            f"invalid trace id {trace_id!r}: expected 32 lowercase hex digits "
            "(use store.schema.new_trace_id())"
        )
    return trace_id


def check_name(name: object, what: str = "name") -> str:
    """Validate a tag / metric name / result kind or key: non-empty text without controls."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"invalid {what} {name!r}: 1-{MAX_NAME_LENGTH} characters expected")
    if _CONTROL.search(name):
        raise InvalidName(f"invalid {what} {name!r}: control characters are not allowed")
    return name


@dataclass(frozen=True)
class Layout:
    """The store directory: ``data/ab/<id>.h5`` trace files, ``tmp/`` for writes in flight."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def trace_path(self, trace_id: str) -> Path:
        trace_id = check_trace_id(trace_id)
        return self.data_dir / trace_id[:2] / f"{trace_id}{TRACE_SUFFIX}"

    def temp_path(self, trace_id: str) -> Path:
        """A unique temp name in ``tmp/`` (same file system as ``data/`` so rename is atomic)."""
        trace_id = check_trace_id(trace_id)
        return self.tmp_dir / f"{trace_id}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"

    def trace_files(self) -> Iterator[tuple[str | None, Path]]:
        """Every file under ``data/``, with the trace id its name claims (None if it is no id)."""
        if not self.data_dir.is_dir():
            return
        for path in sorted(self.data_dir.rglob("*")):
            if path.is_file():
                stem = path.name.removesuffix(TRACE_SUFFIX)
                ok = path.name.endswith(TRACE_SUFFIX) and _TRACE_ID.fullmatch(stem)
                yield (stem if ok and path == self.trace_path(stem) else None), path

    def temp_files(self) -> list[Path]:
        return (
            sorted(p for p in self.tmp_dir.glob("*") if p.is_file())
            if self.tmp_dir.is_dir()
            else []
        )


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (POSIX needs the directory fsynced too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def store_lock(layout: Layout, exclusive: bool) -> Iterator[None]:
    """Writers hold a shared lock while adding; gc holds it exclusively.

    This keeps gc from deleting a file a live writer has renamed into place but not yet
    indexed. A killed writer's lock dies with it, so nothing is ever stuck.
    """
    fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
