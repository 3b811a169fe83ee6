"""Automatic dispatch: named queues, schedules, retry policies, dead letters, paused queues.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_MS = sa.BigInteger()  # epoch milliseconds, UTC
_QUEUE = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    """Add the queue name, schedule and retry policy to both tables, dead letters to the store,
    the dispatcher's indexes, and the table of queue states (paused, rate-limit tokens)."""
    for table in ("queued_tasks", "tasks"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("queue", _QUEUE, nullable=False, server_default="default"))
            batch.add_column(sa.Column("scheduled_at", _MS, nullable=True))
            # JSON: backoffMinSeconds, backoffMaxSeconds, backoffMultiplier, retryOn, permanentOn.
            batch.add_column(sa.Column("retry_policy", sa.Text(), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("dead_letter", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        # Taken by a dispatcher (automatic retries) rather than by a caller's dequeue.
        batch.add_column(
            sa.Column("dispatched", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.drop_index("ix_queued_tasks_dequeue_order", table_name="queued_tasks")
    op.create_index(
        "ix_queued_tasks_dequeue_order",
        "queued_tasks",
        ["queue", sa.text("priority DESC"), "seq"],
    )
    op.create_index("ix_queued_tasks_queue_scheduled_at", "queued_tasks", ["queue", "scheduled_at"])
    op.create_index(
        "ix_tasks_status_queue_next_attempt_at", "tasks", ["status", "queue", "next_attempt_at"]
    )
    # A re-drive starts a dead letter's attempt count again, so an attempt number can repeat in
    # one task's log; the start time tells the runs apart.
    with op.batch_alter_table("task_executions", recreate="always") as batch:
        batch.drop_constraint("uq_task_executions_task_attempt", type_="unique")
        batch.create_unique_constraint(
            "uq_task_executions_task_attempt_start", ["task_id", "attempt", "started_at"]
        )
    op.create_table(
        "queues",
        sa.Column("name", _QUEUE, primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", _MS, nullable=False),
        # The queue's dispatch rate limit, a token bucket shared by every dispatcher.
        sa.Column("dispatch_tokens", sa.Float(), nullable=True),
        sa.Column("tokens_refilled_at", _MS, nullable=True),
    )


def downgrade() -> None:
    """Remove what upgrade added."""
    op.drop_table("queues")
    with op.batch_alter_table("task_executions", recreate="always") as batch:
        batch.drop_constraint("uq_task_executions_task_attempt_start", type_="unique")
        batch.create_unique_constraint("uq_task_executions_task_attempt", ["task_id", "attempt"])
    op.drop_index("ix_tasks_status_queue_next_attempt_at", table_name="tasks")
    op.drop_index("ix_queued_tasks_queue_scheduled_at", table_name="queued_tasks")
    op.drop_index("ix_queued_tasks_dequeue_order", table_name="queued_tasks")
    op.create_index(
        "ix_queued_tasks_dequeue_order", "queued_tasks", [sa.text("priority DESC"), "seq"]
    )
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("dispatched")
        batch.drop_column("dead_letter")
    for table in ("queued_tasks", "tasks"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("retry_policy")
            batch.drop_column("scheduled_at")
            batch.drop_column("queue")
