"""Due tasks apart from those scheduled for later, so a dequeue reads only what it may take.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``queued_tasks.promoted`` and order only the tasks a dequeue may take.

    A dequeue walked the index of every Queued task in order (priority, then sequence) and
    skipped those scheduled for later one by one: 50,000 tasks scheduled ahead of a due one
    made each dequeue 12 ms on SQLite, not 0.3 (``bench/scheduled_ahead.py``). A task scheduled
    for later is kept out of the order's index now: it is in it when it has no
    ``scheduled_at``, or once a dequeue, finding it due in the index of waiting tasks, has set
    ``promoted``. Each waiting task is promoted once, and a dequeue reads only promotable and
    takeable rows.

    The old index of the whole order stays for now: servers of the previous version, which
    dequeue with the old statement until they are restarted, would otherwise scan and sort
    the whole queue on every dequeue. A later revision drops it.
    """
    # ALTER TABLE ADD COLUMN, not a batch: SQLite's copy of the table would lose AUTOINCREMENT
    # (sequence numbers never reused, which FIFO order across deletes relies on), and a queue of
    # millions of tasks would be rewritten.
    op.add_column(
        "queued_tasks",
        sa.Column("promoted", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_queued_tasks_ready_order",
        "queued_tasks",
        ["queue", sa.text("priority DESC"), "seq"],
        sqlite_where=sa.text("scheduled_at IS NULL OR promoted = 1"),
        postgresql_where=sa.text("scheduled_at IS NULL OR promoted"),
    )
    op.create_index(
        "ix_queued_tasks_waiting",
        "queued_tasks",
        ["queue", "scheduled_at"],
        sqlite_where=sa.text("promoted = 0 AND scheduled_at IS NOT NULL"),
        postgresql_where=sa.text("NOT promoted AND scheduled_at IS NOT NULL"),
    )


def downgrade() -> None:
    """Remove what upgrade added."""
    op.drop_index("ix_queued_tasks_waiting", table_name="queued_tasks")
    op.drop_index("ix_queued_tasks_ready_order", table_name="queued_tasks")
    with op.batch_alter_table("queued_tasks", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("promoted")
