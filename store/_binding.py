"""A store directory and its index, bound to each other by a store id kept in both.

The id lives in ``<store>/store-id`` and in the index's ``lvi_meta`` table. Opening checks
they agree, so a trace is never written into one directory while indexed in another (whose
``gc`` would then delete it), and a lost index is rebuilt with ``reindex`` instead of being
silently replaced by an empty one.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from ._index import Index
from ._paths import OWN_DIRS, STORE_ID_FILE, Layout, check_trace_id, fsync_dir
from .errors import StoreError, StoreOpenError
from .schema import new_trace_id


def shown_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        return repr(url)


def check_root(root: Path) -> None:
    """The store directory, or the nearest part of its path that exists, is a directory, and
    it is not inside another store's own folders (whose verify and gc would see it as foreign
    files, and whose layout it would clutter)."""
    for path in (root, *root.parents):
        if path.exists():
            if not path.is_dir():
                raise StoreOpenError(
                    f"cannot use {root} as a store: {path} is a file, not a directory"
                )
            break
    for outer in root.parents:
        inner = root.relative_to(outer).parts[0]
        if inner in OWN_DIRS and (outer / STORE_ID_FILE).is_file():
            raise StoreOpenError(
                f"cannot use {root} as a store: it lies inside the {inner}/ folder of the "
                f"store {outer}; choose a folder outside it"
            )


def read_store_id(layout: Layout) -> str | None:
    path = layout.no_links(layout.store_id_path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreOpenError(f"cannot read the store id in {path}: {exc}") from None
    try:
        return check_trace_id(text)
    except StoreError:
        raise StoreOpenError(
            f"{path} is damaged (expected 32 hex digits); restore it from a backup"
        ) from None


def write_store_id(layout: Layout, store_id: str) -> None:
    tmp = layout.tmp_dir / f".store-id-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:  # on disk before the rename: a crash
        f.write(store_id + "\n")  # must not leave an empty id that refuses every open
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, layout.store_id_path)
    fsync_dir(layout.root)


def bind(index: Index, layout: Layout, db_url: str, writable: bool, rebuilding: bool) -> None:
    """Check that directory and index carry the same store id; on a write open, record it
    where it is missing (a new store, or one made before ids), refusing another store's
    index and an empty index for a directory that holds traces."""
    lay, shown = layout, shown_url(db_url)
    dir_id, index_id = read_store_id(lay), index.store_id()
    if dir_id is not None and index_id is not None:
        if dir_id != index_id:
            raise StoreOpenError(
                f"the index {shown} belongs to another store (id {index_id}), not to "
                f"{lay.root} (id {dir_id}); give this store's own --db, or none"
            )
        return
    if not writable:
        return
    if index_id is not None:
        raise StoreOpenError(
            f"the index {shown} belongs to another store (id {index_id}); {lay.root} "
            "is not that store. Give this store's own --db, or none"
        )
    if dir_id is None:  # a new store, or one made before stores had ids
        dir_id = new_trace_id()
        write_store_id(lay, dir_id)
    elif not rebuilding and index.count() == 0 and any(t for t, _ in lay.trace_files()):
        raise StoreOpenError(
            f"the index {shown} is empty but {lay.root} holds traces; rebuild it with "
            f"`lvlm-interpret store reindex --store {lay.root}` (plus the same --db)"
        )
    index.bind(dir_id)
