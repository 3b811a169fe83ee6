"""Stores made before revision 0003: their dead letters, and PostgreSQL's attempt ids.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Mend what revision 0003 left in a store that already held tasks.

    - It added ``dead_letter`` as false for every task there: a Failed task out of attempts
      (``attempts > max_retries``, the rule of ``TaskRecord.attempts_left``) is a dead letter,
      listed and re-driven as one.
    - On PostgreSQL it rebuilt ``task_executions`` (a batch copy) with a new ``id`` sequence
      starting at 1, while the copied attempts kept their ids: the next outcomes collided with
      them ("duplicate key ... task_executions_pkey"), and tasks stayed Processing past their
      lease. The sequence moves past every id, as ``db copy`` moves it.

    Both hold on any store, whatever revision made it: no row changes where nothing was wrong.
    """
    op.execute(
        "UPDATE tasks SET dead_letter = true "
        "WHERE status = 'Failed' AND attempts > max_retries AND NOT dead_letter"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "SELECT setval(pg_get_serial_sequence('task_executions', 'id'), top) "
            "FROM (SELECT max(id) AS top FROM task_executions) AS logged WHERE top IS NOT NULL"
        )


def downgrade() -> None:
    """Nothing to undo: both changes hold at revision 0008 too."""
