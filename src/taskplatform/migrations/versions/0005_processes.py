"""The processes serving a database: one row each, kept fresh while it runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_MS = sa.BigInteger()  # epoch milliseconds, UTC


def upgrade() -> None:
    """Add ``processes``: each API or worker process on this database and the queue it uses.

    Processes on one database that name different queues (one Redis, one the database's own,
    or two Redis databases) each see only their own tasks; this table lets each notice the
    others (``TaskService.announce``).
    """
    op.create_table(
        "processes",
        sa.Column("process_id", sa.String(128), primary_key=True),  # host:pid:random
        sa.Column("queue", sa.Text(), nullable=False),  # where its queue is, no password
        sa.Column("started_at", _MS, nullable=False),
        sa.Column("seen_at", _MS, nullable=False),
    )
    op.create_index("ix_processes_seen_at", "processes", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_processes_seen_at", table_name="processes")
    op.drop_table("processes")
