"""Lease expiry index, idempotency keys, and (PostgreSQL) a NOTIFY on every enqueue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_KEY = sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")
_TASK_ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")

# Long-polling dequeues in other processes LISTEN on this channel; a statement-level trigger sends
# one notification per enqueueing statement, after its transaction commits.
_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION taskplatform_notify_enqueued() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('taskplatform_enqueued', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
_NOTIFY_TRIGGER = """
CREATE TRIGGER queued_tasks_notify AFTER INSERT ON queued_tasks
FOR EACH STATEMENT EXECUTE FUNCTION taskplatform_notify_enqueued()
"""


def upgrade() -> None:
    """Add the lease index, the idempotency key table and the enqueue notification."""
    op.create_index("ix_tasks_status_lease_expires_at", "tasks", ["status", "lease_expires_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key", _KEY, primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("task_id", _TASK_ID, nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_NOTIFY_TRIGGER)


def downgrade() -> None:
    """Remove what upgrade added."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS queued_tasks_notify ON queued_tasks")
        op.execute("DROP FUNCTION IF EXISTS taskplatform_notify_enqueued()")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_tasks_status_lease_expires_at", table_name="tasks")
