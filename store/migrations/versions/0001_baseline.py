"""Index schema 1, as it was before Alembic: traces and their tags, metrics, answer tokens
and results; on SQLite also the covering index and the FTS5 trigram table.

The tables are written out here rather than taken from store._index: a revision must keep
creating schema 1 when the current schema has moved on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_KEY = sa.String(32)


def _child(name: str, *columns: sa.SchemaItem) -> None:
    op.create_table(
        name,
        sa.Column("trace_id", _KEY, primary_key=True),
        *columns,
        sa.ForeignKeyConstraint(["trace_id"], ["traces.trace_id"], ondelete="CASCADE"),
    )


def upgrade() -> None:
    meta = op.create_table(
        "lvi_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "traces",
        sa.Column("trace_id", _KEY, primary_key=True),
        sa.Column("model_id", sa.String(512), nullable=False),
        sa.Column("model_revision", sa.String(256), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("image_name", sa.String(1024), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("adapter", sa.String(64), nullable=False),
        sa.Column("reference_answer", sa.Text),
        sa.Column("correct", sa.Boolean),
        sa.Column("precision", sa.String(16), nullable=False),
        sa.Column("num_layers", sa.Integer, nullable=False),
        sa.Column("num_heads", sa.Integer, nullable=False),
        sa.Column("prompt_length", sa.Integer, nullable=False),
        sa.Column("answer_length", sa.Integer, nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("file_checksum", sa.String(80), nullable=False),
        sa.Column("info_json", sa.Text, nullable=False),
    )
    for name, columns in (
        ("ix_traces_model_created", ["model_id", "created_at"]),
        ("ix_traces_model_revision", ["model_id", "model_revision"]),
        ("ix_traces_created", ["created_at"]),
        ("ix_traces_correct_created", ["correct", "created_at"]),
        ("ix_traces_image", ["image_sha256"]),
    ):
        op.create_index(name, "traces", columns)
    _child("trace_tags", sa.Column("tag", sa.String(200), primary_key=True))
    op.create_index("ix_tags_tag", "trace_tags", ["tag", "trace_id"])
    _child(
        "trace_metrics",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_metrics_name_value", "trace_metrics", ["name", "value"])
    _child(
        "answer_tokens",
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("token", sa.String(256), nullable=False),
    )
    op.create_index("ix_answer_tokens_token", "answer_tokens", ["token", "trace_id"])
    _child(
        "trace_results",
        sa.Column("kind", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
    )
    fts = ""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # Model + date + text filters read prompts from this index, not the wide rows.
        op.create_index(
            "ix_traces_model_created_text",
            "traces",
            ["model_id", "created_at", "prompt", "answer"],
            if_not_exists=True,
        )
        try:
            with bind.begin_nested():
                bind.exec_driver_sql(
                    "CREATE VIRTUAL TABLE traces_fts USING fts5(prompt, answer, tokenize='trigram')"
                )
            fts = "trigram"
        except sa.exc.OperationalError:  # SQLite without FTS5 trigram: LIKE it is
            fts = ""
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}, {"key": "fts", "value": fts}])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS traces_fts")
    for name in ("trace_results", "answer_tokens", "trace_metrics", "trace_tags", "traces"):
        op.drop_table(name)
    op.drop_table("lvi_meta")
