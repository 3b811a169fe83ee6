"""Copy a store from one database to another (``taskplatform db copy``): how a deployment that
started on the embedded SQLite file moves to PostgreSQL, or back, with its tasks.

Every table of the schema is copied row for row, in one read snapshot of the source, into a
target that holds no tasks yet: the tasks in every status with their results and errors, the
attempt log, the database's own queue (each task at its place: its seq number is kept), the
idempotency keys, the queues' pause and rate state, and the depth history. Both databases are
first brought to the newest schema revision. A Redis queue is not a database: its tasks and keys
stay where they are and the copy does not need them (keep ``TASKPLATFORM_QUEUE_URL`` as it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    MetaData,
    String,
    Table,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool

from taskplatform.backends import scheme
from taskplatform.backends.migrate import advance_queue_sequence_on
from taskplatform.exceptions import TaskPlatformError

T = TypeVar("T")

TABLES: dict[str, tuple[str, ...]] = {
    "tasks": ("task_id",),
    "task_executions": ("id",),
    "queued_tasks": ("seq",),
    "idempotency_keys": ("key",),
    "queues": ("name",),
    "queue_depth_samples": ("queue", "sampled_at"),
}
"""Each table of the store and its primary key, by which it is read in batches."""

HELD = ("tasks", "task_executions", "queued_tasks", "idempotency_keys")
"""The tables a copy must find empty in the target. A server started on it once leaves rows in
``queues`` and ``queue_depth_samples`` (the default queue's depth); those are replaced."""

BATCH_ROWS = 2000
"""The most rows read and written at a time."""

BATCH_BYTES = 32 * 1024 * 1024
"""How much row text a batch holds at most (characters of its text columns; one row at least):
before each batch the database measures the next :data:`BATCH_ROWS` rows, and the batch takes
as many as fit. So ordinary tasks (a few hundred bytes) go 2,000 at a time, and tasks of the
largest data and result (a few MiB each) a dozen at a time, wherever they lie in the table,
where 2,000 of them would hold GiBs."""


class TargetNotEmpty(TaskPlatformError):
    """The target database already holds tasks; a copy goes only into an empty store."""

    code = "target_not_empty"
    title = "Target not empty"


@dataclass
class _Side:
    """One end of the copy: a connection, sync (SQLite) or async (PostgreSQL), in a transaction."""

    sync: Connection | None = None
    asynchronous: AsyncConnection | None = None

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` with a sync connection (on an async one through SQLAlchemy's greenlet)."""
        if self.asynchronous is not None:
            return await self.asynchronous.run_sync(work)
        assert self.sync is not None
        return work(self.sync)


@contextlib.asynccontextmanager
async def _opened(
    url: str, *, snapshot: bool, connect_timeout_seconds: float
) -> AsyncIterator[_Side]:
    """Open one connection to ``url`` in a transaction; ``snapshot`` makes every read of it see
    the database as of its first (PostgreSQL: REPEATABLE READ; SQLite: one read transaction)."""
    if scheme(url) == "sqlite":
        engine = create_sync_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection, connection.begin():
                if snapshot:
                    # pysqlite begins a transaction only before a write: without this BEGIN each
                    # read would see the file as of its own moment.
                    connection.exec_driver_sql("BEGIN")
                yield _Side(sync=connection)
        finally:
            engine.dispose()
        return
    from taskplatform.backends import postgres

    connect = postgres.connector(url, connect_timeout_seconds=connect_timeout_seconds)
    isolation = "REPEATABLE READ" if snapshot else "READ COMMITTED"
    async_engine = postgres.create_engine(connect, poolclass=NullPool, isolation_level=isolation)
    try:
        async with async_engine.connect() as opened, opened.begin():
            yield _Side(asynchronous=opened)
    finally:
        await async_engine.dispose()


def _reflect(connection: Connection) -> dict[str, Table]:
    metadata = MetaData()
    metadata.reflect(bind=connection, only=list(TABLES))
    return dict(metadata.tables)


def _count(tables: dict[str, Table]) -> Callable[[Connection], dict[str, int]]:
    def count(connection: Connection) -> dict[str, int]:
        return {
            name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
            for name, table in tables.items()
        }

    return count


def _fitting(
    table: Table, key: tuple[str, ...], after: tuple[Any, ...] | None
) -> Callable[[Connection], int]:
    """How many of the rows after ``after`` the next batch takes: as many, up to
    :data:`BATCH_ROWS`, as fit in :data:`BATCH_BYTES` (at least one), measured by the database
    (the lengths of the text columns, a running sum in key order); no row leaves it."""

    def measure(connection: Connection) -> int:
        columns = [table.c[name] for name in key]
        texts = [column for column in table.c if isinstance(column.type, String)]
        size = sum((func.coalesce(func.length(column), 0) for column in texts), literal(8))
        query = select(*columns, size.label("size")).order_by(*columns).limit(BATCH_ROWS)
        if after is not None:
            query = query.where(tuple_(*columns) > tuple_(*after))
        rows = query.subquery()
        running = func.sum(rows.c.size).over(order_by=[rows.c[name] for name in key])
        totals = connection.execute(
            select(running).order_by(*(rows.c[name] for name in key))
        ).scalars()
        return max(1, sum(1 for total in totals if total <= BATCH_BYTES))

    return measure


def _batch(
    table: Table, key: tuple[str, ...], after: tuple[Any, ...] | None, limit: int
) -> Callable[[Connection], list[dict[str, Any]]]:
    def read(connection: Connection) -> list[dict[str, Any]]:
        columns = [table.c[name] for name in key]
        query = select(table).order_by(*columns).limit(limit)
        if after is not None:
            query = query.where(tuple_(*columns) > tuple_(*after))
        return [dict(row) for row in connection.execute(query).mappings()]

    return read


def _write(table: Table, rows: list[dict[str, Any]]) -> Callable[[Connection], None]:
    def write(connection: Connection) -> None:
        connection.execute(insert(table), rows)

    return write


def _clear(tables: dict[str, Table]) -> Callable[[Connection], None]:
    def clear(connection: Connection) -> None:
        for name in TABLES:
            if name not in HELD:
                connection.execute(tables[name].delete())

    return clear


# The queue's counter must pass every number a task holds, queued or stored: a task stored now
# goes back into the queue at its number when requeued, and a new task must not get that number
# (nor, on PostgreSQL, any number the counter has not handed out: see requeue_insert).
_SQLITE_COUNTERS = (
    (
        "queued_tasks",
        "SELECT max(top) FROM (SELECT max(seq) AS top FROM queued_tasks"
        " UNION ALL SELECT max(sequence) FROM tasks) AS numbers",
    ),
    ("task_executions", "SELECT max(id) FROM task_executions"),
)


def _advance_counters(dialect: str) -> Callable[[Connection], None]:
    def advance(connection: Connection) -> None:
        if dialect == "postgresql":
            advance_queue_sequence_on(connection)  # what a server does at start, too
            connection.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('task_executions', 'id'), top) "
                    "FROM (SELECT max(id) AS top FROM task_executions) AS runs "
                    "WHERE top IS NOT NULL"
                )
            )
            return
        for table, query in _SQLITE_COUNTERS:  # AUTOINCREMENT's: the largest number given
            top = connection.execute(text(query)).scalar_one()
            if top is not None:
                connection.execute(
                    text("DELETE FROM sqlite_sequence WHERE name = :name"), {"name": table}
                )
                connection.execute(
                    text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :top)"),
                    {"name": table, "top": top},
                )

    return advance


async def ensure_empty(url: str, *, connect_timeout_seconds: float = 5.0) -> None:
    """Check, before anything is changed, that the store at ``url`` can take a copy: what
    :func:`copy_store` checks again in its transaction. A store at any schema revision, or
    none: a table it does not have holds no rows, and a SQLite file not there yet is empty
    (and is not made here).

    Raises:
        TargetNotEmpty: it holds tasks, attempts, queued tasks or idempotency keys.
        sqlalchemy.exc.SQLAlchemyError, OSError: it failed or cannot be reached.
    """
    if scheme(url) == "sqlite":
        from taskplatform.backends.sqlite import sqlite_path

        if not await asyncio.to_thread(Path(sqlite_path(url)).exists):
            return

    def reflect_held(connection: Connection) -> dict[str, Table]:
        metadata = MetaData()
        metadata.reflect(bind=connection, only=lambda name, _: name in HELD)
        return dict(metadata.tables)

    async with _opened(
        url, snapshot=False, connect_timeout_seconds=connect_timeout_seconds
    ) as side:
        _refuse_held(await side.run(_count(await side.run(reflect_held))))


RUNNING_WITHIN_SECONDS = 30.0
"""A process whose heartbeat (every 10 s) is this recent is taken for running."""


async def running_processes(url: str, *, connect_timeout_seconds: float = 5.0) -> list[str]:
    """Return the ids (``host:pid:random``) of the processes that use the store at ``url`` now:
    those seen in its ``processes`` table within :data:`RUNNING_WITHIN_SECONDS`. One that
    stopped cleanly has taken its row out; one killed is listed until its row ages.

    Why: :func:`copy_store` reads one snapshot, and what a running server writes after it
    (a create acknowledged, an attempt recorded) would be missing from the copy.

    Raises:
        sqlalchemy.exc.SQLAlchemyError, OSError: it failed or cannot be reached.
    """
    within = round(RUNNING_WITHIN_SECONDS * 1000)
    query = text("SELECT process_id FROM processes WHERE seen_at >= :since ORDER BY process_id")

    def read(connection: Connection) -> list[str]:
        if not inspect(connection).has_table("processes"):
            # A store before schema revision 0005: its servers (of an older release) leave no
            # heartbeat to read.
            return []
        # Servers write seen_at on the database's clock (TaskService.sync_clock); SQLite's is
        # this host's.
        if connection.dialect.name == "postgresql":
            from taskplatform.backends.postgres import QUERIES

            now = int(connection.execute(text(QUERIES["clock"])).scalar_one())
        else:
            now = time.time_ns() // 1_000_000
        rows = connection.execute(query, {"since": now - within})
        return [str(row[0]) for row in rows]

    async with _opened(
        url, snapshot=False, connect_timeout_seconds=connect_timeout_seconds
    ) as side:
        return await side.run(read)


def _refuse_held(counted: dict[str, int]) -> None:
    held = {name: rows for name, rows in counted.items() if rows}
    if held:
        listed = ", ".join(f"{rows} in {name}" for name, rows in sorted(held.items()))
        raise TargetNotEmpty(
            f"the target database already holds rows ({listed}); copy into an empty one"
        )


async def copy_store(
    source_url: str,
    target_url: str,
    *,
    connect_timeout_seconds: float = 5.0,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every row of the store at ``source_url`` into the empty store at ``target_url``.

    Both URLs as ``TASKPLATFORM_DATABASE_URL`` takes them; both schemas must be at the newest
    revision (:func:`~taskplatform.backends.prepare_schema`). The source is read in one snapshot,
    so a server still writing to it would see its later writes missing from the copy: stop the
    servers (and workers) first. The target is written in one transaction: a failure leaves it
    as empty as it was.

    Args:
        progress: Called with a table's name and the rows copied of it so far, after each batch.

    Returns:
        ``{table: rows copied}`` for every table of :data:`TABLES`.

    Raises:
        TargetNotEmpty: the target holds tasks, attempts, queued tasks or idempotency keys.
        sqlalchemy.exc.SQLAlchemyError, OSError: a database failed or cannot be reached.
    """
    opened = {"connect_timeout_seconds": connect_timeout_seconds}
    async with (
        _opened(source_url, snapshot=True, **opened) as source,
        _opened(target_url, snapshot=False, **opened) as target,
    ):
        source_tables = await source.run(_reflect)
        target_tables = await target.run(_reflect)
        _refuse_held(await target.run(_count({name: target_tables[name] for name in HELD})))
        await target.run(_clear(target_tables))
        copied: dict[str, int] = {}
        for name, key in TABLES.items():
            copied[name] = 0
            after: tuple[Any, ...] | None = None
            while True:
                limit = await source.run(_fitting(source_tables[name], key, after))
                rows = await source.run(_batch(source_tables[name], key, after, limit))
                if not rows:
                    break
                await target.run(_write(target_tables[name], rows))
                copied[name] += len(rows)
                after = tuple(rows[-1][column] for column in key)
                if progress is not None:
                    progress(name, copied[name])
        await target.run(_advance_counters(scheme(target_url)))
    return copied


def describe(copied: Iterable[tuple[str, int]]) -> str:
    """Return ``copied`` as one line: ``tasks 12, task_executions 30, ...``."""
    return ", ".join(f"{name} {rows:,}" for name, rows in copied)
