"""Alembic environment: always given an open connection by store.migrations (never a URL)."""

from __future__ import annotations

from alembic import context

LOCK_KEY = 0x6C7669  # "lvi": PostgreSQL advisory lock held while migrating

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Two processes opening an old shared index at once: the second waits here, then
        # finds the index migrated and runs nothing (Alembic reads the revision after this).
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
    context.run_migrations()
