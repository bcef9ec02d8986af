"""Where things live inside a store directory, and the checks that keep it that way.

Trace ids become file names, so they are validated strictly (32 hex digits, stored lower
case) and every path is derived from the id, never from user text or the index. The store
never follows a symbolic link below its root: a link where a directory or file of the store
should be is an error, so nothing a caller or a planted link does makes the store read,
write or delete a file outside its directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidName, InvalidTraceId, StoreError

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SHARD = re.compile(r"[0-9a-f]{2}")
# The only names this code gives files in tmp/: `<id>.<pid>.<8 hex>.tmp.h5` (a trace being
# written), `.probe-<pid>` (a write test) and `.store-id-<pid>` (the store id being written).
_TEMP_NAME = re.compile(r"[0-9a-f]{32}\.\d+\.[0-9a-f]{8}\.tmp\.h5|\.probe-\d+|\.store-id-\d+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_LENGTH = 200
DB_FILE = "index.sqlite"
STORE_ID_FILE = "store-id"
TRACE_SUFFIX = ".h5"
TEMP_SUFFIX = ".tmp.h5"
OWN_DIRS = ("data", "tmp", "quarantine")  # the folders Layout names below the root


def check_trace_id(trace_id: object) -> str:
    """``trace_id`` in lower case if it is 32 hex digits, else raise :class:`InvalidTraceId`."""
    if isinstance(trace_id, str) and _TRACE_ID.fullmatch(trace_id.lower()):
        return trace_id.lower()
    raise InvalidTraceId(f"invalid trace id {trace_id!r}: a trace id is 32 hexadecimal digits")


def check_name(name: object, what: str = "name") -> str:
    """A tag / metric name / result kind or key in Unicode NFC, so "café" typed either way is
    one name; it must be non-empty text without control characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"invalid {what} {name!r}: 1-{MAX_NAME_LENGTH} characters expected")
    if _CONTROL.search(name):
        raise InvalidName(f"invalid {what} {name!r}: control characters are not allowed")
    return unicodedata.normalize("NFC", name)


def is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Layout:
    """The store directory: ``data/ab/<id>.h5`` trace files, ``tmp/`` for writes in flight,
    ``quarantine/`` for files that could not be read (kept, never deleted)."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def store_id_path(self) -> Path:
        return self.root / STORE_ID_FILE

    def trace_path(self, trace_id: str) -> Path:
        trace_id = check_trace_id(trace_id)
        return self.data_dir / trace_id[:2] / f"{trace_id}{TRACE_SUFFIX}"

    def temp_path(self, trace_id: str) -> Path:
        """A unique temp name in ``tmp/`` (same file system as ``data/`` so rename is atomic)."""
        trace_id = check_trace_id(trace_id)
        return self.tmp_dir / f"{trace_id}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"

    def no_links(self, path: Path) -> Path:
        """``path`` (inside the root) if nothing from the root down to it is a symbolic link.

        The root itself may be a link (the user chose it); below it the store owns every
        name, so a link there was planted and is refused rather than followed.
        """
        current = self.root
        for part in path.relative_to(self.root).parts:
            current = current / part
            if is_link(current):
                raise StoreError(
                    f"{current} is a symbolic link; the store never follows links inside its "
                    "directory. Replace it with the real directory or file"
                )
        return path

    def trace_files(self) -> Iterator[tuple[str | None, Path]]:
        """Every entry under ``data/`` (links included, never followed), with the trace id its
        place claims: None for anything that is not a regular file at a trace's own path."""
        if is_link(self.data_dir) or not self.data_dir.is_dir():
            return
        for shard in sorted(os.scandir(self.data_dir), key=lambda e: e.name):
            if not shard.is_dir(follow_symlinks=False):
                yield None, Path(shard.path)
                continue
            for entry in sorted(os.scandir(shard.path), key=lambda e: e.name):
                path = Path(entry.path)
                stem = entry.name.removesuffix(TRACE_SUFFIX)
                own = (
                    entry.is_file(follow_symlinks=False)
                    and _SHARD.fullmatch(shard.name)
                    and entry.name.endswith(TRACE_SUFFIX)
                    and _TRACE_ID.fullmatch(stem)
                    and stem[:2] == shard.name
                )
                yield (stem if own else None), path

    def temp_files(self) -> list[Path]:
        """Regular files in a real ``tmp/`` directory whose names this code gives temp files."""
        if is_link(self.tmp_dir) or not self.tmp_dir.is_dir():
            return []
        return sorted(
            Path(e.path)
            for e in os.scandir(self.tmp_dir)
            if e.is_file(follow_symlinks=False) and _TEMP_NAME.fullmatch(e.name)
        )

    def quarantine(self, path: Path) -> Path:
        """Move ``path`` into ``quarantine/`` (same file system: a rename); returns where."""
        self.no_links(self.quarantine_dir)
        self.quarantine_dir.mkdir(exist_ok=True)
        n, dest = 0, self.quarantine_dir / path.name
        while dest.exists() or is_link(dest):
            n += 1
            dest = self.quarantine_dir / f"{path.name}.{n}"
        os.rename(path, dest)
        fsync_dir(self.quarantine_dir)
        fsync_dir(path.parent)
        return dest


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
    fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def setup_lock(layout: Layout) -> Iterator[None]:
    """Held (on the root directory itself) while a process creates or binds a store, so two
    processes opening a brand-new store at once cannot both create its index."""
    fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
