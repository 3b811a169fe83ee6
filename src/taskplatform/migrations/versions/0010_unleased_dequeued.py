"""Tasks a revision-0001 server dequeued: a lease, so that the reaper can return them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

LEASE_MS = 300_000
"""The lease given, in ms: ``TASKPLATFORM_DEQUEUE_LEASE_SECONDS``'s default, counted from the
upgrade (the setting a server will run with is not known here)."""


def upgrade() -> None:
    """Give each Dequeued task without a lease token one, expiring ``LEASE_MS`` from now.

    Revision 0001's dequeue set no lease (``lease_token`` and ``lease_expires_at`` NULL), and
    the reaper takes back only Dequeued tasks whose ``lease_expires_at`` has passed: such a
    task, dequeued by a client that never executed it, stayed Dequeued for ever after the
    upgrade (found in review). Every later dequeue sets a token, also with leases off
    (``lease_expires_at`` NULL, kept for ever by choice), so a row without one is revision
    0001's. The token is the task id: unique, and 36 characters as the column allows.
    """
    op.execute(
        sa.text(
            "UPDATE tasks SET lease_token = task_id, lease_expires_at = :expires "
            "WHERE status = 'Dequeued' AND lease_token IS NULL"
        ).bindparams(expires=int(time.time() * 1000) + LEASE_MS)
    )


def downgrade() -> None:
    """Nothing to undo: a lease on a Dequeued task holds at revision 0009 too."""
