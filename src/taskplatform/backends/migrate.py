"""Schema migrations with Alembic: upgrade a database, and refuse one newer than this code."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from taskplatform.exceptions import TaskPlatformError
from taskplatform.settings import Settings

T = TypeVar("T")

# pg_advisory_xact_lock key: serialises servers that start at once on an empty database.
_MIGRATION_LOCK = 7_461_203_981


class SchemaError(TaskPlatformError):
    """The database schema is at a revision this version of taskplatform does not know."""

    code = "schema_unknown"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", "taskplatform:migrations")
    return config


def head_revision() -> str:
    """Return the newest schema revision this code ships."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _upgrade_on(connection: Connection, revision: str, dequeue_lease_seconds: float) -> None:
    # Processes that start at once on a new database (serve --workers N, serve beside worker)
    # must not both see an empty schema and both create it: the second would fail on "table
    # already exists". Each takes the database's write lock before it reads the revision.
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
    elif connection.dialect.name == "sqlite":
        # sqlite3 opens a transaction only before DML and Python's default busy wait is 5 s; an
        # explicit BEGIN IMMEDIATE takes the write lock now, and the DDL after it joins it.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    config = _config()
    script = ScriptDirectory.from_config(config)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise SchemaError(
            f"the database schema is at revision {current!r}, which this taskplatform "
            f"(newest revision {script.get_current_head()!r}) does not know; it was probably "
            "written by a newer taskplatform: upgrade taskplatform, or point "
            "TASKPLATFORM_DATABASE_URL at another database"
        )
    config.attributes["connection"] = connection
    config.attributes["dequeue_lease_seconds"] = dequeue_lease_seconds  # for revision 0010
    command.upgrade(config, revision)


def _make_sqlite_folder(sqlalchemy_url: str) -> None:
    path = unquote(sqlalchemy_url.removeprefix("sqlite:///"))  # as SQLAlchemy opens it
    if path and path != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot create the SQLite database's folder: {exc.strerror}",
                exc.filename,
            ) from exc


def _in_transaction_sync(
    sqlalchemy_url: str, work: Callable[[Connection], T], busy_timeout_seconds: float = 5.0
) -> T:
    # sqlite3's own busy wait (its timeout argument): how long the BEGIN IMMEDIATE of the
    # schema step waits for another process's write lock.
    engine = create_engine(
        sqlalchemy_url, poolclass=NullPool, connect_args={"timeout": busy_timeout_seconds}
    )
    try:
        with engine.begin() as connection:
            return work(connection)
    finally:
        engine.dispose()


async def _in_transaction(
    url: str,
    work: Callable[[Connection], T],
    connect_timeout_seconds: float,
    busy_timeout_seconds: float = 5.0,
) -> T:
    """Run ``work`` in one transaction on a connection of its own: ``sqlite://`` URLs on a worker
    thread (waiting up to ``busy_timeout_seconds`` for another process's lock),
    ``postgresql://`` URLs on asyncpg (given ``connect_timeout_seconds`` to connect)."""
    if url.startswith("sqlite"):
        return await asyncio.to_thread(_in_transaction_sync, url, work, busy_timeout_seconds)
    from taskplatform.backends import postgres

    connect = postgres.connector(url, connect_timeout_seconds=connect_timeout_seconds)
    engine = postgres.create_engine(connect, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


# The queue's seq numbers come from one PostgreSQL sequence; a task stored while the queue was
# Redis carries Redis's number, which goes back into queued_tasks when the task is requeued or
# re-driven. Past the sequence, that number would be handed out again to a new task.
_ADVANCE_QUEUE_SEQUENCE = text(
    """
    SELECT setval(serial.name, stored.top)
    FROM (SELECT pg_get_serial_sequence('queued_tasks', 'seq') AS name) AS serial,
         (SELECT max(top) AS top FROM (SELECT max(sequence) AS top FROM tasks
                                       UNION ALL SELECT max(seq) FROM queued_tasks) AS numbers)
         AS stored
    WHERE stored.top > COALESCE(
        (SELECT last_value FROM pg_sequences
         WHERE format('%I.%I', schemaname, sequencename) = serial.name), 0)
    """
)


def advance_queue_sequence_on(connection: Connection) -> None:
    """:func:`advance_queue_sequence` on an open PostgreSQL ``connection`` (``db copy``)."""
    connection.execute(_ADVANCE_QUEUE_SEQUENCE)


async def advance_queue_sequence(url: str, *, connect_timeout_seconds: float = 5.0) -> None:
    """Move the PostgreSQL queue's seq counter past every task's number, stored or queued.

    For a queue switched back from Redis to the database (``TASKPLATFORM_QUEUE_URL`` unset
    again): tasks stored meanwhile carry Redis's numbers, and once one is requeued, a new task
    numbered by the old counter would collide with it (a 503 on create). Called at start; one
    scan of ``tasks``. The schema must be current (:func:`upgrade`).
    """
    await _in_transaction(url, advance_queue_sequence_on, connect_timeout_seconds)


async def upgrade(
    url: str,
    *,
    connect_timeout_seconds: float = 5.0,
    busy_timeout_seconds: float = 5.0,
    revision: str = "head",
    dequeue_lease_seconds: float = Settings.model_fields["dequeue_lease_seconds"].default,
) -> str:
    """Bring the database at ``url`` to the newest revision (or to ``revision``, an older one,
    as a test makes the database an older release left); return that revision.

    An empty database gets the whole schema; an up-to-date one is left alone. ``sqlite://`` URLs
    migrate on a worker thread, waiting up to ``busy_timeout_seconds`` for another process's
    write lock (``TASKPLATFORM_SQLITE_BUSY_TIMEOUT_SECONDS``); ``postgresql://`` URLs (as
    ``TASKPLATFORM_DATABASE_URL`` has them) on asyncpg, which waits
    ``connect_timeout_seconds`` for a connection (or the URL's ``connect_timeout``).
    ``dequeue_lease_seconds`` is the server's ``TASKPLATFORM_DEQUEUE_LEASE_SECONDS``, which
    revision 0010 gives the tasks an old release dequeued.

    Raises:
        SchemaError: the database is at a revision this code does not know (written by a newer
            taskplatform); nothing is changed.
        OSError: the folder of a SQLite file cannot be made.
    """
    if url.startswith("sqlite"):
        _make_sqlite_folder(url)
    await _in_transaction(
        url,
        functools.partial(
            _upgrade_on, revision=revision, dequeue_lease_seconds=dequeue_lease_seconds
        ),
        connect_timeout_seconds,
        busy_timeout_seconds,
    )
    return head_revision() if revision == "head" else revision
