"""Queue depth history: one sample per queue per sampling interval, for the dashboard's chart.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_MS = sa.BigInteger()  # epoch milliseconds, UTC
_QUEUE = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    """Add ``queue_depth_samples``: the depth of each queue at the start of each interval.

    The key (queue, sampled_at) lets every server write the same interval's sample: an upsert,
    so several processes sampling at once leave one row.
    """
    op.create_table(
        "queue_depth_samples",
        sa.Column("queue", _QUEUE, nullable=False),
        # The start of the sampling interval the sample belongs to (a bucket, not the exact time).
        sa.Column("sampled_at", _MS, nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("queue", "sampled_at", name="pk_queue_depth_samples"),
    )
    # Reads ("the last hour") and pruning ("older than a day") both go by time over all queues.
    op.create_index("ix_queue_depth_samples_sampled_at", "queue_depth_samples", ["sampled_at"])


def downgrade() -> None:
    """Remove what upgrade added."""
    op.drop_index("ix_queue_depth_samples_sampled_at", table_name="queue_depth_samples")
    op.drop_table("queue_depth_samples")
