"""PostgreSQL: the attempts' id sequence takes its table's name.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_LEFT_BY_0003 = "_alembic_tmp_task_executions_id_seq"
_NAME = "task_executions_id_seq"  # what PostgreSQL names a serial column's sequence


def upgrade() -> None:
    """Rename ``_alembic_tmp_task_executions_id_seq`` to ``task_executions_id_seq``.

    Revision 0003 rebuilt ``task_executions`` (a batch copy, for its unique constraint) and
    Alembic renamed the copy, not the sequence its ``id`` draws from; a name that reads as the
    leftover of a migration that failed halfway. A rename changes nothing else: the column's
    default and ``pg_get_serial_sequence`` refer to the sequence by its oid. SQLite has no
    sequence objects; nothing to do there.
    """
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER SEQUENCE IF EXISTS {_LEFT_BY_0003} RENAME TO {_NAME}")


def downgrade() -> None:
    """Nothing: the old name was an accident, and 0003's downgrade rebuilds the table anyway."""
