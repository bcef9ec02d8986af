"""OS and database failures, turned into the store's own errors with one clear message."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from .errors import StoreError, StoreFull, StoreReadOnly

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
READONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def is_full(exc: BaseException) -> bool:
    """Out-of-space errors arrive as OSError errnos, or as text from HDF5 / SQLite."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "file too large", "disk is full", "quota"))


def reason(exc: BaseException) -> str:
    """The first line of what went wrong, without SQLAlchemy's SQL echo and links."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def translate(exc: BaseException, what: str) -> BaseException:
    """A store error for an OS or database failure (other exceptions pass unchanged)."""
    if isinstance(exc, StoreError) or not isinstance(exc, (OSError, sa.exc.SQLAlchemyError)):
        return exc
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    if is_full(cause):
        return StoreFull(
            f"{what}: out of disk space ({reason(exc)}); nothing was changed. Free space and retry"
        )
    readonly = "readonly database" in str(cause).lower()
    if readonly or (isinstance(cause, OSError) and cause.errno in READONLY_ERRNOS):
        return StoreReadOnly(
            f"{what}: {reason(exc)}. The store can only be read here (mode 'r'); "
            "fix its permissions to change it"
        )
    return StoreError(f"{what}: {reason(exc)}")


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Turn database and OS failures inside the block into one store error."""
    try:
        yield
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        raise translate(exc, what) from exc
