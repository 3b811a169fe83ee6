"""The store's identity: one random id per database, for the queues it shares.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_MS = sa.BigInteger()  # epoch milliseconds, UTC


def upgrade() -> None:
    """Add ``store_identity``: one row, a random id this database keeps for its life.

    A Redis queue serves one store. Two databases that name one Redis queue (the same URL and
    key prefix: a staging and a production server, say) take each other's tasks into their own
    tables, where the other's clients cannot find them. Each process names its store's id in
    the queue (``TaskService.announce``) and so notices another store there. An id, not the
    database's URL: one database is reached by several names (``localhost``, an address, a
    proxy), and a copy (``taskplatform db copy``) is another store, with an id of its own.
    """
    table = op.create_table(
        "store_identity",
        sa.Column("store_id", sa.String(36), primary_key=True),
        sa.Column("created_at", _MS, nullable=False),
    )
    op.bulk_insert(
        table, [{"store_id": str(uuid.uuid4()), "created_at": time.time_ns() // 1_000_000}]
    )


def downgrade() -> None:
    op.drop_table("store_identity")
