"""Alembic migrations of the index schema, run through Alembic's API (no alembic.ini).

Revision ``NNNN`` is index schema version N (``lvi_meta.schema_version``, which each
revision keeps in step because other code and older versions read it). An index made
before Alembic (schema 1 or 2, no ``alembic_version`` table) is stamped with its version
first, then upgraded like any other.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent


def revision(schema_version: int) -> str:
    """The Alembic revision of an index schema version."""
    return f"{schema_version:04d}"


def current(conn: Connection) -> str | None:
    """The revision recorded in the database, None when it has no ``alembic_version``
    (read with plain SQL: opening a store must not import Alembic when nothing changes)."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def _config(conn: Connection):  # -> alembic.config.Config (imported only when migrating)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = conn
    return config


def upgrade(conn: Connection, target: str = "heads") -> None:
    """Run the migrations from the database's revision up to ``target``, in ``conn``'s
    transaction (the caller commits)."""
    from alembic import command

    command.upgrade(_config(conn), target)


def stamp(conn: Connection, target: str) -> None:
    """Record ``target`` as the database's revision without running anything (an index made
    before Alembic, whose schema version says where it stands)."""
    from alembic import command

    command.stamp(_config(conn), target)
