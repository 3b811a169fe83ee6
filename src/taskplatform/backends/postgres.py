"""The PostgreSQL backend: queue and store as tables, reached through SQLAlchemy 2 and asyncpg.

Several API processes on several hosts share one database: dequeue is one statement with
``FOR UPDATE SKIP LOCKED``, and every status change a compare-and-set ``UPDATE``, so PostgreSQL's
row locks make them atomic across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import asyncpg
import msgspec
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from taskplatform.backends.base import (
    PURGE_BATCH_KEYS,
    PURGE_BATCHES,
    DepthSample,
    IdempotencyClaim,
    IdempotentReplay,
    ProcessRecord,
    Queue,
    QueueActivity,
    QueueCounts,
    Store,
    TaskChanges,
)
from taskplatform.backends.grouping import DequeueGroups, GroupCommit
from taskplatform.backends.sqlfile import load_queries
from taskplatform.backends.sqlrows import (
    NO_CURSOR,
    compare_and_set_sql,
    execution_params,
    execution_record,
    handed_over,
    queue_list_sql,
    queue_params,
    queued_record,
    store_list_sql,
    stored_record,
    task_params,
)
from taskplatform.exceptions import BackendUnavailable, raise_if_cancelled
from taskplatform.faults import Faults
from taskplatform.models import (
    DEFAULT_QUEUE,
    QUEUED_FIELDS,
    ExecutionRecord,
    Status,
    TaskRecord,
    queued_values,
)
from taskplatform.settings import split_userinfo

logger = logging.getLogger(__name__)

QUERIES = load_queries("postgres")
SQL = {name: text(sql) for name, sql in QUERIES.items()}
#: ``text()`` of the statements built at run time (a few dozen shapes, each used over and over).
_text = functools.lru_cache(maxsize=256)(text)

PROMOTE_EVERY_SECONDS = 0.05
"""How often, at most, a busy queue's dequeues promote the tasks that came due (a dequeue that
finds fewer tasks than it asks for promotes and tops up anyway): a task scheduled for later may
be passed over by tasks after it in the order (lower priorities, later ones of its own) for this
long after its time."""

_CHANNEL = "taskplatform_enqueued"  # notified by the trigger of migration 0002


@functools.lru_cache(maxsize=256)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """Return ``sql`` (named ``:parameters``, as ``text()`` takes) in asyncpg's ``$n`` form, and
    the parameter names in ``$n`` order; SQLAlchemy's own compiler does the rewriting, so a
    statement reads the same on both paths. Cached: a few dozen shapes, used over and over."""
    compiled = text(sql).compile(dialect=_DIALECT)
    return compiled.string, tuple(compiled.positiontup or ())


_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]
# Errors of the driver itself, met on the hot path that bypasses SQLAlchemy's execution layer.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    # A connection refused at the pool's checkout ("the database system is starting up", "too
    # many clients") comes as the dialect's DBAPI error: no SQLAlchemy Connection wraps it.
    AsyncAdapt_asyncpg_dbapi.Error,
)
# Those after which the connection cannot be trusted again.
_BROKEN_CONNECTION = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def driver_dsn(url: str) -> tuple[str, float | None]:
    """Return ``url`` as asyncpg reads it, and the libpq ``connect_timeout`` it names, if any.

    Args:
        url: ``postgresql://`` or ``postgres://``, with a ``+driver`` suffix or none, and any
            libpq URL parameters (``?sslmode=require&application_name=x``). As SQLAlchemy reads
            it, the user and password run to the last ``@`` and are percent-decoded, so a
            password may hold ``#``, ``?``, ``/`` or ``@`` as they are or encoded.

    Returns:
        ``(dsn, connect_timeout)``: the URL with the ``postgresql://`` scheme and its user and
        password percent-encoded, which asyncpg parses itself, so its libpq parameters work as
        libpq documents them (``sslmode``, ``sslrootcert``, ``target_session_attrs``, ...; any
        other it sends to the server as a setting, as ``application_name`` and ``options``
        are); and ``connect_timeout`` in seconds, which asyncpg does not read from a URL, or
        None when absent (``0`` or less, libpq's "wait for ever", is refused: a process must
        not hang at startup). ``ssl=``, the parameter SQLAlchemy passed to asyncpg as a
        keyword, is read as ``sslmode=`` (the same values).

    Raises:
        ValueError: not a PostgreSQL URL, no database named (in the path or as ``dbname=``),
            a port that is not a number from 1 to 65535, an IPv6 address without brackets (or
            its closing one), a ``connect_timeout`` that is not a positive number, or both
            ``ssl`` and ``sslmode``. The message never holds the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() not in ("postgresql", "postgres"):
        raise ValueError("not a PostgreSQL URL: use postgresql://user:password@host:5432/db")
    credentials, location = split_userinfo(rest)
    address, _, query_string = location.partition("?")
    hosts = address.split("/", 1)[0]
    for host in filter(None, hosts.split(",")):
        if host.startswith("[") and "]" not in host:
            raise ValueError(f"the host {host!r}: an IPv6 address needs its closing ']'")
        port = host.rpartition("]")[2] if host.startswith("[") else host
        if not host.startswith("[") and port.count(":") > 1:
            raise ValueError(f"the host {host!r}: put an IPv6 address in brackets, [::1]:5432")
        port = port.rpartition(":")[2] if ":" in port else ""
        if ":" in host.rpartition("]")[2] and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"the port {port!r} of {host!r}: use a number from 1 to 65535")
    connect_timeout: float | None = None
    kept: list[tuple[str, str]] = []
    query = parse_qsl(query_string, keep_blank_values=True)
    for name, value in query:
        if name == "connect_timeout":
            try:
                connect_timeout = float(value)
            except ValueError:
                connect_timeout = None
            if connect_timeout is None or not 0 < connect_timeout < float("inf"):
                raise ValueError(f"connect_timeout={value!r}: use a positive number of seconds")
        elif name == "ssl":
            if "sslmode" in {name for name, _ in query}:
                raise ValueError("both ssl= and sslmode= are given: keep sslmode=")
            kept.append(("sslmode", value))
        else:
            kept.append((name, value))
    if not address.partition("/")[2] and not {"dbname", "database"} & {name for name, _ in query}:
        # libpq would take the user's name: for the user postgres, the server's maintenance
        # database, where the schema would then be made beside whatever else lives there.
        raise ValueError(
            "the URL names no database: add one, as in postgresql://user@host:5432/tasks"
        )
    if credentials:
        user, colon, password = credentials.partition(":")
        encoded = quote(unquote(user), safe="")
        if colon:
            encoded += ":" + quote(unquote(password), safe="")
        credentials = encoded + "@"
    query_string = f"?{urlencode(kept)}" if kept else ""
    return f"postgresql://{credentials}{address}{query_string}", connect_timeout


def connector(
    url: str, *, connect_timeout_seconds: float, statement_timeout_seconds: float | None = None
) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """Return a function that opens a new asyncpg connection to the database at ``url``.

    Args:
        url: As :func:`driver_dsn` takes it.
        connect_timeout_seconds: How long a new connection may take, unless ``url`` names a
            ``connect_timeout``.
        statement_timeout_seconds: How long any one statement on the connection may wait for
            its answer (asyncpg's ``command_timeout``; then ``TimeoutError``, and asyncpg asks
            the server to cancel it); None for no limit (migrations, ``db copy``).

    Raises:
        ValueError: as :func:`driver_dsn`, at once.
    """
    dsn, connect_timeout = driver_dsn(url)
    timeout = connect_timeout or connect_timeout_seconds

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            dsn, timeout=timeout, command_timeout=statement_timeout_seconds
        )

    return connect


def create_engine(
    connect: Callable[[], Awaitable[asyncpg.Connection]], **options: Any
) -> AsyncEngine:
    """Return a SQLAlchemy engine on asyncpg whose connections ``connect`` opens.

    asyncpg, not SQLAlchemy, reads the URL (see :func:`connector`): SQLAlchemy would pass each
    URL parameter to ``asyncpg.connect()`` as a keyword, and libpq's (``sslmode=require``) are
    not its keywords.

    Args:
        connect: What :func:`connector` returns.
        options: For :func:`sqlalchemy.ext.asyncio.create_async_engine` (pool settings).
    """
    return create_async_engine("postgresql+asyncpg://", async_creator=connect, **options)


class PostgresDatabase:
    """A pooled connection to one PostgreSQL database, shared by its queue and store.

    Args:
        url: ``postgresql://user:password@host:port/database``, with any libpq URL parameters
            (see :func:`driver_dsn`).
        pool_size: Connections kept open.
        pool_overflow: Extra connections allowed under load.
        connect_timeout_seconds: How long to wait for a new connection.
        statement_timeout_seconds: How long one statement may wait for its answer; past it
            the statement fails (``BackendUnavailable``) and its connection is dropped.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        pool_overflow: int = 20,
        connect_timeout_seconds: float = 5.0,
        statement_timeout_seconds: float | None = 30.0,
    ) -> None:
        self.url = url
        #: Opens a connection of its own, outside the pool (LISTEN holds one for good).
        self.connect = connector(
            url,
            connect_timeout_seconds=connect_timeout_seconds,
            statement_timeout_seconds=statement_timeout_seconds,
        )
        self.engine = create_engine(
            self.connect,
            pool_size=pool_size,
            max_overflow=pool_overflow,
            pool_timeout=max(30.0, connect_timeout_seconds),  # wait for a pooled connection
            pool_recycle=3600,
            # An error's text would otherwise carry the statement's parameters: task data and
            # callback URLs, which must stay out of logs and 503 answers.
            hide_parameters=True,
        )
        # Reads need no transaction: AUTOCOMMIT saves the BEGIN and COMMIT round trips.
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._closed = False

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """Yield a connection in a transaction that commits on exit (rolls back on error).

        Raises:
            BackendUnavailable: the database cannot be reached or failed the statement.
        """
        with _translated_errors():
            async with self.engine.begin() as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """Yield a connection in autocommit mode: each statement is a transaction of its own.

        For reads, and for writes of one statement, which are atomic by themselves.

        Raises:
            BackendUnavailable: the database cannot be reached or failed the statement.
        """
        with _translated_errors():
            async with self._autocommit.connect() as connection:
                yield connection

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[asyncpg.Record]:
        """Run one statement in autocommit on a pooled connection's asyncpg driver; return its
        rows (positional like SQLAlchemy's, which :func:`stored_record` and friends read).

        The hot path: dequeue, every compare-and-set, the group commit of creates and reading
        a task. SQLAlchemy's execution layer (greenlet hop, compiled cache lookup, cursor and
        result wrappers) cost about 110 µs of CPU per statement, a third of what the dispatcher
        spent per task, and its ``Connection`` around a checkout as much again
        (``bench/postgres_statement.py``); so this takes the connection from SQLAlchemy's pool
        itself, with the pool's settings (size, overflow, timeout, recycle) and its reset on
        return. Every other statement stays SQLAlchemy's. ``sql`` takes ``:named`` parameters,
        like ``text()``.

        Raises:
            BackendUnavailable: the database cannot be reached or failed the statement.
        """
        statement, names = positional(sql)
        arguments = [params[name] for name in names]
        with _translated_errors():
            # engine.dispose() replaces the pool: look it up each time.
            pooled = await greenlet_spawn(self.engine.sync_engine.pool.connect)
            try:
                driver: asyncpg.Connection = pooled.driver_connection
                rows: list[asyncpg.Record] = await driver.fetch(statement, *arguments)
                return rows
            except _BROKEN_CONNECTION:
                # SQLAlchemy did not see the failure; do what it does on a disconnect: drop
                # this connection, and since after a restart or failover the pool's others are
                # dead too, replace them all rather than fail one request on each.
                await greenlet_spawn(pooled.invalidate)
                await self.engine.dispose()
                raise
            finally:
                if pooled.is_valid:
                    await greenlet_spawn(pooled.close)  # back to the pool

    async def fetchrow(self, sql: str, params: Mapping[str, Any]) -> asyncpg.Record | None:
        """Like :meth:`fetch`, for a statement of at most one row; None when it has none."""
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        """Close the pool; later calls do nothing."""
        if not self._closed:
            self._closed = True
            await self.engine.dispose()


def _columns(rows: list[dict[str, Any]], names: Iterable[str]) -> dict[str, list[Any]]:
    """Return ``rows`` as one array per column ``name``: the parameters of the statements
    that insert many rows from ``unnest`` arrays."""
    return {name: [row[name] for row in rows] for name in names}


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn driver errors into BackendUnavailable, so none reaches the service."""
    try:
        yield
    except TimeoutError as exc:
        raise_if_cancelled()
        logger.warning("postgresql error: %s", _NO_ANSWER)
        raise BackendUnavailable(f"the PostgreSQL database failed: {_NO_ANSWER}") from exc
    except (SQLAlchemyError, *_DRIVER_ERRORS, OSError) as exc:
        raise_if_cancelled()
        logger.warning("postgresql error: %s: %s", type(exc).__name__, _brief(exc))
        raise BackendUnavailable(f"the PostgreSQL database failed: {_brief(exc)}") from exc


_NO_ANSWER = (
    "no answer in time (a new connection waits TASKPLATFORM_DATABASE_CONNECT_TIMEOUT_SECONDS, "
    "a statement TASKPLATFORM_DATABASE_STATEMENT_TIMEOUT_SECONDS)"
)


def _brief(exc: BaseException) -> str:
    """The first line of a driver error, without the SQL or the parameters SQLAlchemy appends,
    and without the value asyncpg quotes when it cannot encode an argument (task data)."""
    message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    if not message:
        return type(exc).__name__
    return _ARGUMENT_VALUE.sub(r"\1", message[0])


# asyncpg: "invalid input for query argument $3: 'the value' (reason)".
_ARGUMENT_VALUE = re.compile(r"(query argument \$\d+): .*")


def _logging_attempt(compare_and_set: str) -> str:
    """``compare_and_set`` (an ``UPDATE … RETURNING``) and the attempt's entry in the log as one
    statement: a data-modifying CTE writes the entry only when the row changed, as the two
    statements of ``execution_insert`` after a successful compare-and-set in one transaction
    would, in one round trip instead of four. Parameters of the entry are ``:log_<name>``."""
    return (
        f"WITH changed AS ({compare_and_set}), logged AS ("
        "INSERT INTO task_executions (task_id, attempt, started_at, finished_at, duration_ms, "
        "http_status, result, error) "
        "SELECT :log_task_id, :log_attempt, :log_started_at, :log_finished_at, "
        ":log_duration_ms, :log_http_status, :log_result, :log_error FROM changed "
        "ON CONFLICT (task_id, attempt, started_at) DO NOTHING) "
        "SELECT * FROM changed"
    )


FINISH_ATTEMPTS = QUERIES["finish_attempts"]
_OUTCOME_FIELDS = positional(FINISH_ATTEMPTS)[1]


def _is_start(changes: TaskChanges) -> bool:
    """Whether ``changes`` are those of the start of an attempt (the service's move to
    Processing: one more attempt, a fresh lease token, a lease from the task's own timeout),
    which concurrent callers can share: only the lease token differs between them."""
    return isinstance(changes.lease_grace_seconds, float) and msgspec.structs.replace(
        changes, lease_token=msgspec.UNSET
    ) == TaskChanges(
        increment_attempts=True,
        lease_grace_seconds=changes.lease_grace_seconds,
        next_attempt_at=None,
    )


def _is_outcome(
    expected: tuple[Status, ...],
    changes: TaskChanges,
    *,
    require_attempts_left: bool,
    due_by: int | None,
) -> bool:
    """Whether a compare-and-set is an attempt's outcome of the shape ``finish_attempts``
    applies: from Processing, fenced by the lease, clearing it, writing the result, the error
    and the next attempt's time, and no other change (the service's finish and interrupt)."""
    return (
        expected == (Status.PROCESSING,)
        and not require_attempts_left
        and due_by is None
        and not changes.increment_attempts
        and not changes.withdraw_attempt
        and changes.lease_token is None
        and changes.lease_expires_at is None
        and changes.result is not msgspec.UNSET
        and changes.error is not msgspec.UNSET
        and changes.next_attempt_at is not msgspec.UNSET
        and changes.completed_at is not None  # NULL in the arrays means "leave it"
        and changes.dispatched is msgspec.UNSET
        and changes.attempts is msgspec.UNSET
        and changes.scheduled_at is msgspec.UNSET
    )


def _outcome_row(
    task_id: str,
    target: Status,
    now: int,
    changes: TaskChanges,
    lease_token: str,
    execution: ExecutionRecord,
) -> dict[str, Any]:
    """One element of ``finish_attempts``'s arrays (see :func:`_is_outcome` for the shape)."""
    log = execution_params(execution)
    result = changes.result
    return {
        "task_id": task_id,
        "lease_token": lease_token,
        "target": target.value,
        "now": now,
        "result": result.decode() if isinstance(result, bytes) else None,
        "error": changes.error,
        "completed_at": None if changes.completed_at is msgspec.UNSET else changes.completed_at,
        "next_attempt_at": changes.next_attempt_at,
        "dead_letter": None if changes.dead_letter is msgspec.UNSET else changes.dead_letter,
        **{f"log_{name}": value for name, value in log.items() if name != "task_id"},
    }


_StartRow = tuple[str, int, TaskChanges]
"""A start of an attempt waiting for its group: (task id, time, changes)."""


def _queued_columns(tasks: list[TaskRecord]) -> dict[str, Any]:
    """The ``queued_tasks`` columns of ``tasks`` as arrays, one per column (the rows' values
    transposed), for a statement that ``unnest``-s them."""
    arrays = zip(*(queued_values(task) for task in tasks), strict=True)
    return {name: list(array) for name, array in zip(QUEUED_FIELDS, arrays, strict=True)}


class PostgresQueue(Queue):
    """The queue as the ``queued_tasks`` table of a :class:`PostgresDatabase`."""

    def __init__(self, database: PostgresDatabase, faults: Faults | None = None) -> None:
        self.database = database
        self._group: GroupCommit[TaskRecord, int] = GroupCommit(
            self._insert_tasks, key=lambda task: task.task_id, name="enqueue group commit"
        )
        self._keyed_group: GroupCommit[
            tuple[TaskRecord, IdempotencyClaim], int | IdempotentReplay
        ] = GroupCommit(
            self._claim_and_insert, key=lambda row: row[1].key, name="keyed enqueue group commit"
        )
        self._dequeues: DequeueGroups[Store, TaskRecord] = DequeueGroups(self.transfer_many, faults)
        # When each queue's tasks that came due are next promoted (monotonic seconds).
        self._promote_at: dict[str, float] = {}

    async def enqueue(
        self, task: TaskRecord, *, claim: IdempotencyClaim | None = None
    ) -> IdempotentReplay | None:
        if claim is None:
            sequence = await self._group.write(task)
            if sequence is None:  # cannot be: INSERT … RETURNING answers for every row
                raise BackendUnavailable("the PostgreSQL enqueue returned no sequence")
            task.sequence = sequence
            return None
        outcome = await self._keyed_group.write((task, claim))
        if isinstance(outcome, IdempotentReplay):
            return outcome
        if outcome is None:
            # Another statement claimed the key, or took over its expired claim, after this one
            # began (see enqueue_claimed_rows): read the claim now.
            row = await self.database.fetchrow(QUERIES["idempotency_get"], {"key": claim.key})
            if row is None:  # cannot be: a claim outlives its task's enqueue by the key's TTL
                raise BackendUnavailable("the PostgreSQL idempotency claim vanished")
            return IdempotentReplay(task_id=row[1], request_hash=row[0])
        task.sequence = outcome
        return None

    async def _claim_and_insert(
        self, rows: list[tuple[TaskRecord, IdempotencyClaim]]
    ) -> dict[str, int | IdempotentReplay]:
        """Claim the keys of ``rows`` and enqueue the tasks of the claims won, in one statement
        (its keys are distinct, as :class:`GroupCommit` keeps them); by key, the new task's
        seq or the claim that held the key."""
        params = _queued_columns([task for task, _ in rows])
        params["key"] = [claim.key for _, claim in rows]
        params["request_hash"] = [claim.request_hash for _, claim in rows]
        params["expires_at"] = [claim.expires_at for _, claim in rows]
        params["now"] = max(task.created_at for task, _ in rows)
        answered = await self.database.fetch(QUERIES["enqueue_claimed_rows"], params)
        return {
            key: seq if seq is not None else IdempotentReplay(task_id=held, request_hash=hashed)
            for key, seq, hashed, held in answered
        }

    async def enqueue_many(self, tasks: list[TaskRecord]) -> None:
        sequences = await self._insert_tasks(tasks)
        for task in tasks:
            task.sequence = sequences[task.task_id]

    async def _insert_tasks(self, tasks: list[TaskRecord]) -> dict[str, int]:
        """Insert ``tasks`` in one transaction; return their seq by task id."""
        columns = _queued_columns(tasks)
        # One statement, atomic by itself, so autocommit: all rows or none.
        inserted = await self.database.fetch(QUERIES["enqueue_rows"], columns)
        return {task_id: seq for task_id, seq in inserted}

    async def get(self, task_id: str) -> TaskRecord | None:
        row = await self.database.fetchrow(QUERIES["queue_get"], {"task_id": task_id})
        return None if row is None else queued_record(row)

    async def list_tasks(
        self, *, before: str | None, limit: int, queue: str | None = None
    ) -> list[TaskRecord]:
        params: dict[str, Any] = {"before": before or NO_CURSOR, "limit": limit}
        if queue is not None:
            params["queue"] = queue
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(_text(queue_list_sql(queue=queue)), params)).all()
        return [queued_record(row) for row in rows]

    async def queue_counts(self, *, now: int) -> dict[str, QueueCounts]:
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(SQL["queue_stats"], {"now": now})).all()
        return {name: QueueCounts(count, oldest) for name, count, oldest in rows}

    async def status_counts(self, store: Store, queue: str | None = None) -> dict[Status, int]:
        # One statement, one snapshot: a dequeue moves a task between the two tables at once.
        self._check_store(store)
        async with self.database.autocommit() as conn:
            if queue is None:
                rows = (await conn.execute(SQL["status_counts"])).all()
            else:
                rows = (await conn.execute(SQL["status_counts_in_queue"], {"queue": queue})).all()
        return {Status(status): count for status, count in rows}

    async def cancel(self, store: Store, task_id: str, *, now: int) -> TaskRecord | None:
        self._check_store(store)
        async with self.database.begin() as conn:
            row = (await conn.execute(SQL["queue_cancel"], {"task_id": task_id})).first()
            if row is None:
                return None
            task = queued_record(row)
            task.status, task.updated_at = Status.CANCELLED, now
            await conn.execute(SQL["store_insert"], task_params(task))
        return task

    async def hand_over(
        self, store: Store, *, now: int, most: int, lease_token: str, lease_expires_at: int
    ) -> list[TaskRecord]:
        self._check_store(store)
        async with self.database.begin() as conn:
            rows = (await conn.execute(SQL["queue_hand_over"], {"most": most})).all()
            moved = [handed_over(row, now, lease_token, lease_expires_at) for row in rows]
            if moved:
                await conn.execute(SQL["store_insert"], [task_params(task) for task in moved])
        return moved

    async def depth(self) -> int:
        async with self.database.autocommit() as conn:
            count: int = (await conn.execute(SQL["queue_depth"])).scalar_one()
        return count

    async def transfer(
        self,
        store: Store,
        *,
        now: int,
        queue: str = DEFAULT_QUEUE,
        lease_token: str | None = None,
        lease_expires_at: int | None = None,
        dispatched: bool = False,
    ) -> TaskRecord | None:
        self._check_store(store)
        # Concurrent dequeues of a queue share one statement (group commit).
        return await self._dequeues.transfer(
            store,
            now=now,
            queue=queue,
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
            dispatched=dispatched,
        )

    async def transfer_many(
        self,
        store: Store,
        *,
        now: int,
        most: int,
        queue: str = DEFAULT_QUEUE,
        lease_token: str | None = None,
        lease_expires_at: int | None = None,
        dispatched: bool = False,
    ) -> list[TaskRecord]:
        self._check_store(store)
        params = {
            "now": now,
            "most": most,
            "queue": queue,
            "lease_token": lease_token,
            "lease_expires_at": lease_expires_at,
            "dispatched": dispatched,
        }
        # Tasks scheduled for later join the order once due (promote_due), which costs a round
        # trip: at most one per PROMOTE_EVERY_SECONDS per queue while dequeues find all they
        # ask for, and one before topping up a dequeue that found fewer (a caller of a grouped
        # dequeue left without a task would be told the queue is empty).
        promoted = time.monotonic() >= self._promote_at.get(queue, 0.0)
        if promoted:
            await self._promote_due(queue, now)
        # One statement (the CTE deletes and inserts together), atomic by itself: autocommit
        # saves the BEGIN and COMMIT round trips on every dequeue.
        rows = await self.database.fetch(QUERIES["dequeue_next"], params)
        if len(rows) < most and not promoted:
            try:
                await self._promote_due(queue, now)
                rows += await self.database.fetch(
                    QUERIES["dequeue_next"], {**params, "most": most - len(rows)}
                )
            except BackendUnavailable:
                # A dispatcher's claim gets what the first statement moved, rather than losing
                # sight of it until its lease runs out; a top-up that committed and lost its
                # answer is left to that lease. A pull dequeue raises: its caller gives back
                # whatever moved under its token once the database answers (with leases off,
                # nothing else would), the top-up's tasks too.
                if not rows or not dispatched:
                    raise
        tasks = [stored_record(row) for row in rows]
        tasks.sort(key=lambda task: (-task.priority, task.sequence))  # RETURNING has no order
        return tasks

    async def _promote_due(self, queue: str, now: int) -> None:
        self._promote_at[queue] = time.monotonic() + PROMOTE_EVERY_SECONDS
        await self.database.fetch(QUERIES["promote_due"], {"queue": queue, "now": now})

    async def requeue(
        self, store: Store, task: TaskRecord, *, now: int, note: str | None, redrive: bool = False
    ) -> bool:
        self._check_store(store)
        fence = {"task_id": task.task_id, "lease_token": task.lease_token}
        async with self.database.begin() as conn:
            if redrive:
                found = await conn.execute(SQL["redrive_delete"], {"task_id": task.task_id})
            else:
                found = await conn.execute(SQL["requeue_delete"], fence)
            row = found.first()
            if row is None:
                return False
            returned = stored_record(row)
            returned.error, returned.updated_at = note, now
            if redrive:
                returned.attempts, returned.scheduled_at = 0, None
            params = queue_params(returned)
            put = await conn.execute(
                SQL["requeue_insert"], {**params, "sequence": returned.sequence}
            )
            if put.first() is None:  # its number is taken or not ours (requeue_insert): anew
                await conn.execute(SQL["enqueue"], params)
        return True

    async def purge_expired(self, *, now: int) -> None:
        for _ in range(PURGE_BATCHES):
            async with self.database.begin() as conn:
                purged = await conn.execute(
                    SQL["idempotency_purge"], {"now": now, "most": PURGE_BATCH_KEYS}
                )
            if purged.rowcount < PURGE_BATCH_KEYS:
                break

    async def listen(self, on_enqueue: Callable[[], None]) -> None:
        """LISTEN on the channel the enqueue trigger notifies, until cancelled.

        Raises:
            BackendUnavailable: the listening connection cannot be made or is lost.
        """
        try:
            connection = await self.database.connect()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BackendUnavailable(f"cannot LISTEN on PostgreSQL: {exc}") from exc
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        try:
            await connection.add_listener(_CHANNEL, lambda *_: on_enqueue())
            await lost.wait()
            raise BackendUnavailable("the PostgreSQL LISTEN connection was lost")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2)

    def _check_store(self, store: Store) -> None:
        if not (isinstance(store, PostgresStore) and store.database is self.database):
            raise TypeError("a PostgreSQL queue moves tasks only into the store of its database")

    async def ping(self) -> None:
        async with self.database.autocommit() as conn:
            await conn.execute(SQL["ping"])

    async def close(self) -> None:
        await self.database.close()


class PostgresStore(Store):
    """The store as the ``tasks`` and ``task_executions`` tables of a :class:`PostgresDatabase`."""

    def __init__(self, database: PostgresDatabase) -> None:
        self.database = database
        self._outcomes: GroupCommit[dict[str, Any], TaskRecord] = GroupCommit(
            self._finish_attempts, key=lambda row: str(row["task_id"]), name="outcome group commit"
        )
        # By shape (expected statuses, attempts check, lease grace): only like starts share.
        self._starts: dict[tuple[Any, ...], GroupCommit[_StartRow, TaskRecord]] = {}

    async def _compare_and_set(
        self,
        task_id: str,
        *,
        expected: tuple[Status, ...],
        target: Status,
        now: int,
        changes: TaskChanges,
        lease_token: str | None,
        require_attempts_left: bool,
        execution: ExecutionRecord | None,
        due_by: int | None,
    ) -> TaskRecord | None:
        if (
            execution is not None
            and lease_token is not None
            and _is_outcome(
                expected, changes, require_attempts_left=require_attempts_left, due_by=due_by
            )
        ):
            # The outcome of an attempt: concurrent ones share one statement and one commit.
            return await self._outcomes.write(
                _outcome_row(task_id, target, now, changes, lease_token, execution)
            )
        if (
            execution is None
            and lease_token is None
            and due_by is None
            and target is Status.PROCESSING
            and _is_start(changes)
        ):
            # The start of an attempt (a pull execute): concurrent ones share one statement.
            shape = (expected, require_attempts_left, changes.lease_grace_seconds)
            group = self._starts.get(shape)
            if group is None:
                group = self._starts[shape] = GroupCommit(
                    functools.partial(self._start_group, expected, require_attempts_left),
                    key=lambda row: row[0],
                    name="start group commit",
                )
            return await group.write((task_id, now, changes))
        sql, params = compare_and_set_sql(
            task_id,
            expected=expected,
            target=target,
            now=now,
            changes=changes,
            lease_token=lease_token,
            require_attempts_left=require_attempts_left,
            due_by=due_by,
        )
        if execution is not None:
            sql = _logging_attempt(sql)
            params |= {f"log_{k}": v for k, v in execution_params(execution).items()}
        # One statement, atomic by itself: autocommit saves the BEGIN and COMMIT round trips.
        row = await self.database.fetchrow(sql, params)
        return None if row is None else stored_record(row)

    async def _finish_attempts(self, rows: list[dict[str, Any]]) -> dict[str, TaskRecord]:
        """Apply outcomes (:func:`_outcome_row`) in one statement; return the tasks that moved,
        by id (a task whose lease was lost meanwhile is not among them)."""
        # In task id order, as every multi-row write here locks rows: two processes' writes
        # that share tasks (a late outcome, a reaper's interrupt) cannot then deadlock.
        rows = sorted(rows, key=lambda row: str(row["task_id"]))
        columns = _columns(rows, _OUTCOME_FIELDS)
        tasks = [stored_record(row) for row in await self.database.fetch(FINISH_ATTEMPTS, columns)]
        return {task.task_id: task for task in tasks}

    async def _start_group(
        self,
        expected: tuple[Status, ...],
        require_attempts_left: bool,
        rows: list[_StartRow],
    ) -> dict[str, TaskRecord]:
        """Move the tasks of ``rows`` (task id, time, changes of a start) to Processing in one
        statement, each checked on its own; returns the tasks that moved, by id. Each keeps
        its caller's lease token (a caller that saw the statement fail withdraws its start by
        it: ``TaskService._withdraw``), and its lease follows its own task's timeout."""
        moved = await self._compare_and_set_many(
            [task_id for task_id, _, _ in rows],
            expected=expected,
            target=Status.PROCESSING,
            now=max(now for _, now, _ in rows),
            changes=rows[0][2],
            require_attempts_left=require_attempts_left,
            due_by=None,
            lease_tokens=[str(changes.lease_token) for _, _, changes in rows],
        )
        return {task.task_id: task for task in moved}

    async def _compare_and_set_many(
        self,
        task_ids: list[str],
        *,
        expected: tuple[Status, ...],
        target: Status,
        now: int,
        changes: TaskChanges,
        require_attempts_left: bool,
        due_by: int | None,
        lease_tokens: list[str] | None = None,
    ) -> list[TaskRecord]:
        # In task id order, as _finish_attempts: the unnest of a group's ids drives the join, so
        # rows are locked in the ids' order, and two processes starting the same tasks in the
        # orders their requests came would deadlock (PostgreSQL aborts one group: all 503).
        if lease_tokens is None:
            task_ids = sorted(task_ids)
        else:
            pairs = sorted(zip(task_ids, lease_tokens, strict=True))
            task_ids, lease_tokens = [id_ for id_, _ in pairs], [token for _, token in pairs]
        sql, params = compare_and_set_sql(
            "",
            expected=expected,
            target=target,
            now=now,
            changes=changes,
            lease_token=None,
            require_attempts_left=require_attempts_left,
            due_by=due_by,
            many=task_ids,
            lease_tokens=lease_tokens,
        )
        # One UPDATE for all: READ COMMITTED rechecks each row's condition under its row lock,
        # so each moves or stays exactly as its own compare-and-set would.
        return [stored_record(row) for row in await self.database.fetch(sql, params)]

    async def insert_dequeued(self, tasks: list[TaskRecord]) -> set[str]:
        if not tasks:
            return set()
        rows = [task_params(task) for task in tasks]
        # One statement, atomic by itself, so autocommit: all rows or none. Rows are locked in
        # the order they come, which is the queue's; the only concurrent writer of these fresh
        # rows is a recovered reservation's own insert, which sees them as conflicts.
        inserted = await self.database.fetch(QUERIES["store_insert_rows"], _columns(rows, rows[0]))
        return {task_id for (task_id,) in inserted}

    async def get(self, task_id: str) -> TaskRecord | None:
        row = await self.database.fetchrow(QUERIES["store_get"], {"task_id": task_id})
        return None if row is None else stored_record(row)

    async def expired_leases(self, status: Status, *, now: int, limit: int) -> list[TaskRecord]:
        params = {"status": status.value, "now": now, "limit": limit}
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(SQL["store_expired_leases"], params)).all()
        return [stored_record(row) for row in rows]

    async def dequeued_under(self, lease_token: str) -> list[TaskRecord]:
        rows = await self.database.fetch(
            QUERIES["store_dequeued_under"], {"lease_token": lease_token}
        )
        return [stored_record(row) for row in rows]

    async def remove_queued(self, task_id: str, lease_token: str) -> bool:
        params = {"task_id": task_id, "lease_token": lease_token}
        async with self.database.begin() as conn:
            result = await conn.execute(SQL["store_delete_returning"], params)
        return bool(result.rowcount == 1)

    async def list_tasks(
        self,
        *,
        status: Status | None,
        before: str | None,
        limit: int,
        queue: str | None = None,
        dead_letter: bool | None = None,
    ) -> list[TaskRecord]:
        query, params = store_list_sql(status=status, queue=queue, dead_letter=dead_letter)
        params.update(before=before or NO_CURSOR, limit=limit)
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(_text(query), params)).all()
        return [stored_record(row) for row in rows]

    async def due_retries(self, queue: str, *, now: int, limit: int) -> list[TaskRecord]:
        params = {"queue": queue, "now": now, "limit": limit}
        rows = await self.database.fetch(QUERIES["store_due_retries"], params)
        return [stored_record(row) for row in rows]

    async def queue_activity(self, *, since: int) -> dict[str, QueueActivity]:
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(SQL["store_queue_activity"], {"since": since})).all()
        return {name: QueueActivity(busy or 0, attempts) for name, busy, attempts in rows}

    async def paused_queues(self) -> set[str]:
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(SQL["queues_paused"])).all()
        return {name for (name,) in rows}

    async def take_dispatch_token(self, queue: str, *, rate: float, burst: float, now: int) -> bool:
        params = {"name": queue, "rate": rate, "burst": burst, "now": now}
        async with self.database.begin() as conn:
            row = (await conn.execute(SQL["take_dispatch_token"], params)).first()
        return row is not None

    async def give_back_dispatch_token(self, queue: str, *, burst: float) -> None:
        async with self.database.begin() as conn:
            await conn.execute(SQL["give_back_dispatch_token"], {"name": queue, "burst": burst})

    async def set_paused(self, queue: str, paused: bool, *, now: int) -> None:
        async with self.database.begin() as conn:
            await conn.execute(
                SQL["queue_set_paused"], {"name": queue, "paused": paused, "now": now}
            )

    async def record_depth_samples(self, samples: list[DepthSample], *, prune_before: int) -> None:
        rows = [{"queue": s.queue, "sampled_at": s.sampled_at, "depth": s.depth} for s in samples]
        async with self.database.begin() as conn:
            if rows:
                await conn.execute(SQL["depth_sample_upsert"], rows)
            await conn.execute(SQL["depth_sample_prune"], {"before": prune_before})

    async def heartbeat(
        self, process: ProcessRecord, *, since: int, prune_before: int
    ) -> list[ProcessRecord]:
        async with self.database.begin() as conn:
            await conn.execute(SQL["process_upsert"], msgspec.structs.asdict(process))
            await conn.execute(SQL["process_prune"], {"before": prune_before})
            rows = (await conn.execute(SQL["process_list"], {"since": since})).all()
        return [ProcessRecord(*row) for row in rows]

    async def forget_process(self, process_id: str) -> None:
        async with self.database.autocommit() as conn:
            await conn.execute(SQL["process_delete"], {"process_id": process_id})

    async def depth_samples(self, *, since: int) -> list[DepthSample]:
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(SQL["depth_sample_list"], {"since": since})).all()
        return [DepthSample(queue, sampled_at, depth) for queue, sampled_at, depth in rows]

    async def executions(self, task_id: str) -> list[ExecutionRecord]:
        async with self.database.autocommit() as conn:
            rows = (await conn.execute(SQL["execution_list"], {"task_id": task_id})).all()
        return [execution_record(row) for row in rows]

    async def count_by_status(self, queue: str | None = None) -> dict[Status, int]:
        async with self.database.autocommit() as conn:
            if queue is None:
                rows = (await conn.execute(SQL["store_count_by_status"])).all()
            else:
                rows = (
                    await conn.execute(SQL["store_count_by_status_in_queue"], {"queue": queue})
                ).all()
        return {Status(status): count for status, count in rows}

    async def store_id(self) -> str:
        row = await self.database.fetchrow(QUERIES["store_id"], {})
        assert row is not None  # migration 0006 wrote it
        store_id: str = row[0]
        return store_id

    async def queue_sequence(self) -> int:
        row = await self.database.fetchrow(QUERIES["queue_sequence"], {})
        assert row is not None
        sequence: int = row[0]
        return sequence

    async def clock_ms(self) -> int:
        row = await self.database.fetchrow(QUERIES["clock"], {})
        assert row is not None
        clock: int = row[0]
        return clock

    async def ping(self) -> None:
        async with self.database.autocommit() as conn:
            await conn.execute(SQL["ping"])

    async def close(self) -> None:
        await self.database.close()
