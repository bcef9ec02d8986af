"""Index schema 2: analysts' notes on traces, and the live-mode job queue and its workers.

Only new tables: an index of schema 1 gains them in place, its rows untouched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_META = sa.table("lvi_meta", sa.column("key", sa.String), sa.column("value", sa.Text))


def _set_version(version: int) -> None:
    op.execute(_META.update().where(_META.c.key == "schema_version").values(value=str(version)))


def upgrade() -> None:
    op.create_table(
        "trace_notes",
        sa.Column("note_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("token_position", sa.Integer),
        sa.Column("region_json", sa.Text),
        sa.Column("author", sa.String(200)),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.ForeignKeyConstraint(["trace_id"], ["traces.trace_id"], ondelete="CASCADE"),
    )
    op.create_index("ix_notes_trace", "trace_notes", ["trace_id", "note_id"])
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_json", sa.Text, nullable=False),
        sa.Column("submitted_at", sa.String(40), nullable=False),
        sa.Column("started_at", sa.String(40)),
        sa.Column("finished_at", sa.String(40)),
        sa.Column("heartbeat_at", sa.String(40)),
        sa.Column("worker_id", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("progress", sa.Float),
        sa.Column("progress_text", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("trace_id", sa.String(32)),
    )
    op.create_index("ix_jobs_state_submitted", "jobs", ["state", "submitted_at"])
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(512), nullable=False),
        sa.Column("model_revision", sa.String(256)),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.String(40), nullable=False),
        sa.Column("heartbeat_at", sa.String(40), nullable=False),
        sa.Column("stopped_at", sa.String(40)),
    )
    _set_version(2)


def downgrade() -> None:
    for name in ("workers", "jobs", "trace_notes"):
        op.drop_table(name)
    _set_version(1)
