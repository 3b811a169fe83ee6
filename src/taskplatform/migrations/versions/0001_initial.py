"""Initial schema: the queue table, the task store and the attempt log.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only makes an INTEGER PRIMARY KEY an auto-assigned rowid alias; BIGINT elsewhere.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_MS = sa.BigInteger()  # epoch milliseconds, UTC
# Task ids compare byte by byte everywhere (cursor pagination), whatever the database's locale.
_TASK_ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "queued_tasks",
        # AUTOINCREMENT: a sequence number is never reused, so FIFO order survives deletes.
        sa.Column("seq", _ID, primary_key=True, autoincrement=True),
        sa.Column("task_id", _TASK_ID, nullable=False, unique=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("task_data", sa.Text(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _MS, nullable=False),
        sa.Column("updated_at", _MS, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_queued_tasks_dequeue_order",
        "queued_tasks",
        [sa.text("priority DESC"), "seq"],
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", _TASK_ID, primary_key=True),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("task_data", sa.Text(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.String(36), nullable=True),
        sa.Column("lease_expires_at", _MS, nullable=True),
        sa.Column("next_attempt_at", _MS, nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _MS, nullable=False),
        sa.Column("updated_at", _MS, nullable=False),
        sa.Column("dequeued_at", _MS, nullable=True),
        sa.Column("completed_at", _MS, nullable=True),
    )
    op.create_index("ix_tasks_status_task_id", "tasks", ["status", "task_id"])
    op.create_table(
        "task_executions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("task_id", _TASK_ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", _MS, nullable=False),
        sa.Column("finished_at", _MS, nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("task_id", "attempt", name="uq_task_executions_task_attempt"),
    )


def downgrade() -> None:
    """Drop the three tables."""
    op.drop_table("task_executions")
    op.drop_table("tasks")
    op.drop_index("ix_queued_tasks_dequeue_order", table_name="queued_tasks")
    op.drop_table("queued_tasks")
