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


def _lease_seconds() -> float:
    """The dequeue lease of the process that upgrades, in seconds (``serve``, ``worker`` and
    ``db upgrade`` upgrade at start, with their settings' ``TASKPLATFORM_DEQUEUE_LEASE_SECONDS``;
    ``migrate.upgrade``, the one way the migrations run, hands it over)."""
    config = op.get_context().config
    assert config is not None  # migrate.upgrade made it
    return float(config.attributes["dequeue_lease_seconds"])


def upgrade() -> None:
    """Give each Dequeued task without a lease token one, expiring a dequeue lease from now
    (:func:`_lease_seconds`); with leases off (0) the token alone, as a server with leases off
    dequeues (found in review: a 300 s lease whatever the setting, and the reaper returned to the
    queue a task a leases-off server would have left with its client).

    Revision 0001's dequeue set no lease (``lease_token`` and ``lease_expires_at`` NULL), and
    the reaper takes back only Dequeued tasks whose ``lease_expires_at`` has passed: such a
    task, dequeued by a client that never executed it, stayed Dequeued for ever after the
    upgrade (found in review). Every later dequeue sets a token, also with leases off
    (``lease_expires_at`` NULL, kept for ever by choice), so a row without one is revision
    0001's. The token is the task id: unique, and 36 characters as the column allows.
    """
    lease = _lease_seconds()
    expires = int(time.time() * 1000) + round(lease * 1000) if lease > 0 else None
    op.execute(
        sa.text(
            "UPDATE tasks SET lease_token = task_id, lease_expires_at = :expires "
            "WHERE status = 'Dequeued' AND lease_token IS NULL"
        ).bindparams(sa.bindparam("expires", expires, type_=sa.BigInteger()))
    )


def downgrade() -> None:
    """Nothing to undo: a lease on a Dequeued task holds at revision 0009 too."""
