"""Errors raised by the store. Every message says what happened *and* what to do next."""

from __future__ import annotations


class StoreError(Exception):
    """Base class: catch this to handle any store failure."""


class StoreOpenError(StoreError):
    """The store directory or index URL cannot be used: ``--store`` is not a directory, the
    ``--db`` URL is malformed, names a missing driver, an unreachable server, a missing
    directory or a file that is not a database, is in-memory (nothing would be kept), or the
    index belongs to another store. Raised by :func:`store.open_store`."""


class InvalidQuery(StoreError, ValueError):
    """A query whose date, limit or offset cannot be used."""


class InvalidTraceId(StoreError, ValueError):
    """A trace id that is not 32 hex digits (ids become file names, so this is strict)."""


class InvalidName(StoreError, ValueError):
    """A tag, result kind/key or metric name that is empty, too long or has control characters."""


class TraceNotFound(StoreError, KeyError):
    """No trace with this id in the index."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "trace not found"


class CorruptTrace(StoreError):
    """A trace file that is missing, unreadable, not HDF5 or fails its checksum."""


class FormatTooNew(StoreError):
    """A trace file or index written by a newer lvlm-interpret than this one."""


class IndexSchemaTooOld(StoreError):
    """An index this code cannot use as it is: one with no schema version or one older than
    the first migration (rebuild it with ``store reindex``), or an older schema opened
    read-only (``store migrate``, or opening it writable, upgrades it in place)."""


class StoreReadOnly(StoreError, PermissionError):
    """A write on a store opened with mode="r", or on a directory this process cannot write."""


class StoreFull(StoreError, OSError):
    """The disk (or a file size limit) ran out while adding; nothing was added."""


class MissingData(StoreError, LookupError):
    """The trace lacks what was asked for: attention rows its recording policy did not keep,
    a vision tower or cross-attention it did not record. The message says how to record it."""
