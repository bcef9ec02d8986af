"""Alembic environment: always given an open connection by store.migrations (never a URL);
the caller (store._index) holds the transaction and, on PostgreSQL, the migration lock."""

from __future__ import annotations

from alembic import context

context.configure(connection=context.config.attributes["connection"], target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
