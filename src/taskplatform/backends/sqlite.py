"""The embedded backend: queue and store in one SQLite file, written by one thread.

SQLite allows one writer at a time, so each process keeps a single writer connection on a thread of
its own and sends it every write as a job. The thread takes all jobs waiting, runs them in one
``BEGIN IMMEDIATE`` transaction (each inside a savepoint, so one failing job does not undo the
others), commits once, and only then resolves the jobs' futures: group commit, never acknowledging
before the commit. Reads run on a separate connection and thread; WAL lets them proceed beside the
writer. Several processes can share the file; ``busy_timeout`` serialises their writers.

Checkpoints (copying the WAL back into the database file) run on a third connection and thread of
their own, never inside a commit: see :class:`_Checkpointer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import msgspec

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
from taskplatform.exceptions import BackendUnavailable
from taskplatform.faults import Faults
from taskplatform.models import (
    DEFAULT_QUEUE,
    QUEUED_FIELDS,
    ExecutionRecord,
    Status,
    TaskRecord,
    queued_values,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]

SQL = load_queries("sqlite")


_ROWS_PER_INSERT = 500
"""Rows per multi-row INSERT: 500 × 13 parameters stays far below SQLite's limit of 32,766."""


WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
"""``PRAGMA journal_size_limit``: when the WAL starts over, a longer file is cut to this size."""


@functools.lru_cache(maxsize=8)
def _insert_rows_sql(rows: int) -> str:
    """``INSERT INTO queued_tasks`` of ``rows`` rows, positional parameters in
    :data:`~taskplatform.models.QUEUED_FIELDS` order."""
    row = "(" + ", ".join("?" * len(QUEUED_FIELDS)) + ")"
    return f"INSERT INTO queued_tasks ({', '.join(QUEUED_FIELDS)}) VALUES " + ", ".join(
        [row] * rows
    )


def sqlite_path(url: str) -> str:
    """Return the file path of a ``sqlite:///path`` URL (``sqlite:////abs/path`` for absolute),
    percent-decoded (``%20`` is a space, ``%25`` a ``%``), as SQLAlchemy reads it.

    Raises:
        ValueError: the URL is not a SQLite URL with a path, names an in-memory database or a
            folder (a path ending in "/"), holds a NUL, or has a query string (each judged
            once decoded: ``%3Amemory%3A`` is in memory too).
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"not a SQLite URL with a file path: {url!r} (use sqlite:///path/to.db)")
    # Percent-decoded, as SQLAlchemy reads it (the migrations open the file through it): %20 a
    # space. Read as written, sqlite:///my%20data/tasks.db was two files, the schema in one.
    path = unquote(url[len(prefix) :])
    if "\x00" in path:
        raise ValueError(f"the SQLite URL {url!r} holds a NUL (%00), which no file name can")
    if path == ":memory:" or path.startswith("file::memory:"):
        # Each connection would have a database of its own, and the server opens several.
        raise ValueError(
            f"{url!r} is an in-memory database, which the server's connections cannot share and "
            "which keeps no task: name a file, as sqlite:///tasks.db"
        )
    if path.endswith("/"):
        # SQLite would make a file of the folder's name.
        raise ValueError(
            f"the SQLite URL {url!r} names a folder: name a file in it, as .../tasks.db"
        )
    if "?" in url:
        # The migrations (SQLAlchemy) would read it as options and drop them, and the server's
        # own connection would take it as part of the file name: two files.
        raise ValueError(
            f"the SQLite URL {url!r} has a query string: taskplatform sets the connection's "
            "options itself, and a file name must not hold '?'"
        )
    return path


def _use_wal(conn: sqlite3.Connection, busy_timeout_seconds: float) -> None:
    """Put the database file in WAL mode (it stays so), waiting up to ``busy_timeout_seconds``.

    A new file starts in rollback-journal mode, and connections of processes that start at once
    (``serve --workers N``, ``serve`` beside ``worker``) switch it together. The switch needs the
    file to itself, and SQLite answers "database is locked" at once, without its busy wait, to
    one of two connections that ask together (either would wait for the other for ever); so the
    loser tries again here. A file already in WAL mode answers at once.

    Raises:
        sqlite3.OperationalError: still locked after ``busy_timeout_seconds``, or another error.
    """
    deadline = time.monotonic() + busy_timeout_seconds
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))  # jitter: the two must not retry in step
        pause = min(pause * 2, 0.2)


class _Connection:
    """One SQLite connection owned by one daemon thread that runs submitted jobs in order.

    Args:
        path: The database file.
        synchronous: ``NORMAL`` or ``FULL`` (the SQLite pragma).
        busy_timeout_seconds: How long to wait for another process's write lock.
        transactional: When true, each batch of jobs runs in one transaction (the writer).
        name: The thread's name, for debugging.
        autocheckpoint: When false, the connection's commits never checkpoint the WAL
            (``PRAGMA wal_autocheckpoint = 0``); a :class:`_Checkpointer` does it, and asks
            for the rest through :meth:`checkpoint_soon`.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str,
        busy_timeout_seconds: float,
        transactional: bool,
        name: str,
        autocheckpoint: bool = True,
    ) -> None:
        self._jobs: queue.SimpleQueue[list[tuple[Job, asyncio.Future[Any]]] | None] = (
            queue.SimpleQueue()
        )
        # Jobs submitted during this turn of the event loop, handed to the thread together at
        # its end (see submit).
        self._pending: list[tuple[Job, asyncio.Future[Any]]] = []
        self._transactional = transactional
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
        _use_wal(self._conn, busy_timeout_seconds)
        self._conn.execute(f"PRAGMA synchronous = {synchronous}")
        if not autocheckpoint:
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        self._checkpoint_wanted = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``job`` to run on the connection's thread; the future resolves after commit.

        Must be called on the event loop. The jobs of one turn of the loop go to the thread as
        one hand-over at the turn's end: waking a waiting thread is a futex call that costs
        more than most jobs here (8 % of the loop's samples in a dispatcher profile, one per
        outcome), and the thread then runs them as one transaction.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((job, future))
        if len(self._pending) == 1:
            loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._jobs.put(batch)

    def checkpoint_soon(self) -> None:
        """Have the thread run a passive checkpoint after its current batch has committed and
        been answered (see :class:`_Checkpointer`). Safe to call from any thread."""
        self._checkpoint_wanted = True

    def close(self) -> None:
        """Finish the queued jobs, stop the thread and close the connection."""
        self._hand_over()
        self._jobs.put(None)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = first
            stop = False
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.extend(item)
            outcomes = self._run_batch(batch) if self._transactional else self._run_each(batch)
            loop = batch[0][1].get_loop()
            # RuntimeError: the event loop closed while the jobs ran, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, outcomes)
            if stop:
                return
            if self._checkpoint_wanted:
                self._checkpoint_wanted = False
                with contextlib.suppress(sqlite3.Error):  # a later request tries again
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _run_each(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        for job, future in batch:
            try:
                outcomes.append((future, True, job(self._conn)))
            except Exception as exc:
                outcomes.append((future, False, _translate(exc)))
        return outcomes

    def _run_batch(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> list[_Outcome]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            error = _translate(exc)
            return [(future, False, error) for _, future in batch]
        outcomes: list[_Outcome] = []
        for job, future in batch:
            try:
                conn.execute("SAVEPOINT job")
                value = job(conn)
                conn.execute("RELEASE job")
                outcomes.append((future, True, value))
            except Exception as exc:
                try:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except sqlite3.Error:
                    pass
                outcomes.append((future, False, _translate(exc)))
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            error = _translate(exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return [(future, False, error) for _, future in batch]
        return outcomes


_Outcome = tuple["asyncio.Future[Any]", bool, Any]


def _settle(outcomes: list[_Outcome]) -> None:
    for future, ok, value in outcomes:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _Checkpointer:
    """A thread with its own connection that checkpoints the WAL every ``interval_seconds``.

    Why: by default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages,
    on the writer's thread, so every write waiting for that group commit waited for the copy into
    the database file and its fsync too. At 1,000 single creates a second that happened every
    few hundred milliseconds and put the 90th percentile of create latency at 8-12 ms, against
    2.5-3.5 ms with this thread (``bench/run.py``, scenario f). The writer connection turns its
    own checkpoints off; this thread runs ``PRAGMA wal_checkpoint(PASSIVE)``, which takes no
    lock a writer or a reader waits for, and copies whatever no reader still needs.

    SQLite starts the WAL over from its beginning (so the file stops growing) only at the first
    write of a transaction that began with the whole WAL copied. Under a steady stream of writes
    that never happens here, as the writer always appends during the copy. So once the WAL
    holds ``restart_pages`` pages, this thread asks the writer (:meth:`_Connection.
    checkpoint_soon`) to run one more passive checkpoint itself, between two batches: it copies
    only what came since this thread's, and the writer's next transaction starts the WAL over.
    With the defaults that is a short pause of the writer every 16 MiB of WAL, instead of a
    full checkpoint every 4 MiB inside a commit.

    Other processes on the file (``serve --workers N``, the CLI) each run their own or keep
    SQLite's default; a checkpoint that finds another one running waits for a later turn.

    Args:
        path: The database file.
        writer: The writer connection, which finishes a long WAL's checkpoint.
        busy_timeout_seconds: The connection's ``busy_timeout``.
        interval_seconds: Time between checkpoints, seconds.
        restart_pages: The WAL length, in pages, at which the writer is asked to finish.
    """

    def __init__(
        self,
        path: str,
        writer: _Connection,
        busy_timeout_seconds: float,
        *,
        interval_seconds: float = 0.5,
        restart_pages: int = 4096,
    ) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
        self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        self._writer = writer
        self._interval = interval_seconds
        self._restart_pages = restart_pages
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="taskplatform-sqlite-checkpointer", daemon=True
        )
        self._thread.start()

    def checkpoint(self) -> None:
        """Run one passive checkpoint now; ask the writer to finish it if the WAL is long.

        Raises:
            sqlite3.Error: the checkpoint failed.
        """
        # SQLite answers (busy, WAL length, pages copied); only the length matters here.
        _, log, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if log >= self._restart_pages:
            self._writer.checkpoint_soon()

    def close(self) -> None:
        """Stop the thread and close its connection (a checkpoint under way finishes first)."""
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.checkpoint()
            except sqlite3.Error as exc:
                # The writer reports a database that fails; here it only means a later turn.
                logger.debug("sqlite checkpoint failed: %s", exc)


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        logger.warning("sqlite error: %s", exc)
        return BackendUnavailable(f"the SQLite database failed: {exc}")
    return exc


class SQLiteDatabase:
    """One SQLite file shared by :class:`SQLiteQueue` and :class:`SQLiteStore`.

    Args:
        url: ``sqlite:///path``; the schema must exist (see ``backends.migrate.upgrade``).
        synchronous: ``NORMAL`` (survives a process crash) or ``FULL`` (survives power loss).
        busy_timeout_seconds: How long a writer waits for another process's lock, seconds.
        checkpoint_interval_seconds: Time between two checkpoints of the WAL, seconds.
        wal_restart_pages: The WAL length, in pages, at which the writer finishes a checkpoint
            so that the WAL starts over (see :class:`_Checkpointer`).

    Raises:
        BackendUnavailable: the file cannot be opened.
    """

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_seconds: float = 5.0,
        checkpoint_interval_seconds: float = 0.5,
        wal_restart_pages: int = 4096,
    ):
        path = sqlite_path(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.writer = _Connection(
                path,
                synchronous=synchronous,
                busy_timeout_seconds=busy_timeout_seconds,
                transactional=True,
                name="taskplatform-sqlite-writer",
                autocheckpoint=False,
            )
            self.reader = _Connection(
                path,
                synchronous=synchronous,
                busy_timeout_seconds=busy_timeout_seconds,
                transactional=False,
                name="taskplatform-sqlite-reader",
            )
            self.checkpointer = _Checkpointer(
                path,
                self.writer,
                busy_timeout_seconds,
                interval_seconds=checkpoint_interval_seconds,
                restart_pages=wal_restart_pages,
            )
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"cannot open the SQLite database {path!r}: {exc}") from exc
        self._closed = False

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` in a write transaction; return its value once the transaction commits."""
        return await self.writer.submit(job)

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` on the read connection and return its value."""
        return await self.reader.submit(job)

    def close(self) -> None:
        """Finish pending jobs and close the connections; later calls do nothing."""
        if not self._closed:
            self._closed = True
            self.writer.close()
            self.reader.close()
            self.checkpointer.close()


class SQLiteQueue(Queue):
    """The queue as the ``queued_tasks`` table of a :class:`SQLiteDatabase`.

    Args:
        database: The file it shares with its :class:`SQLiteStore`.
        faults: Test-only fault injection (``after_reserve`` fires inside the dequeue transaction).
    """

    def __init__(self, database: SQLiteDatabase, faults: Faults | None = None) -> None:
        self.database = database
        self._faults = faults or Faults()

    async def enqueue(
        self, task: TaskRecord, *, claim: IdempotencyClaim | None = None
    ) -> IdempotentReplay | None:
        row = queue_params(task)

        def job(conn: sqlite3.Connection) -> int | IdempotentReplay:
            if claim is not None:
                replay = claim_key(conn, claim, task)
                if replay is not None:
                    return replay
            seq: int = conn.execute(SQL["enqueue"], row).fetchone()[0]
            return seq

        outcome = await self.database.write(job)
        if isinstance(outcome, IdempotentReplay):
            return outcome
        task.sequence = outcome
        return None

    async def enqueue_many(self, tasks: list[TaskRecord]) -> None:
        # One multi-row INSERT per chunk rather than a statement per task: each sqlite3 call
        # hands the GIL back and forth with the event loop's thread, and on a busy loop each
        # handoff can wait a switch interval; bench/run.py measured the per-row form at a third
        # of the batch rate.
        rows = [queued_values(task) for task in tasks]

        def job(conn: sqlite3.Connection) -> list[int]:
            seqs: list[int] = []
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                conn.execute(_insert_rows_sql(len(chunk)), [v for row in chunk for v in row])
                last: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                # One INSERT under the write lock numbers its rows in order and without gaps
                # (AUTOINCREMENT takes the next value for each); checked, as it costs little.
                first = last - len(chunk) + 1
                ends = conn.execute(SQL["queue_ids_at"], {"first": first, "last": last})
                expected = {first: chunk[0][0], last: chunk[-1][0]}  # task ids
                if dict(ends.fetchall()) != expected:
                    raise RuntimeError("a multi-row enqueue was not numbered consecutively")
                seqs.extend(range(first, last + 1))
            return seqs

        for task, seq in zip(tasks, await self.database.write(job), strict=True):
            task.sequence = seq

    async def get(self, task_id: str) -> TaskRecord | None:
        def job(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(SQL["queue_get"], {"task_id": task_id}).fetchone()
            return None if row is None else queued_record(row)

        return await self.database.read(job)

    async def list_tasks(
        self, *, before: str | None, limit: int, queue: str | None = None
    ) -> list[TaskRecord]:
        sql = queue_list_sql(queue=queue)
        params = {"before": before or NO_CURSOR, "limit": limit, "queue": queue}

        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [queued_record(row) for row in conn.execute(sql, params)]

        return await self.database.read(job)

    async def queue_counts(self, *, now: int) -> dict[str, QueueCounts]:
        def job(conn: sqlite3.Connection) -> dict[str, QueueCounts]:
            rows = conn.execute(SQL["queue_stats"], {"now": now}).fetchall()
            return {name: QueueCounts(count, oldest) for name, count, oldest in rows}

        return await self.database.read(job)

    async def status_counts(self, store: Store, queue: str | None = None) -> dict[Status, int]:
        # One statement, one snapshot: a dequeue moves a task between the two tables at once.
        self._check_store(store)

        def job(conn: sqlite3.Connection) -> dict[Status, int]:
            if queue is None:
                rows = conn.execute(SQL["status_counts"]).fetchall()
            else:
                rows = conn.execute(SQL["status_counts_in_queue"], {"queue": queue}).fetchall()
            return {Status(status): count for status, count in rows}

        return await self.database.read(job)

    async def cancel(self, store: Store, task_id: str, *, now: int) -> TaskRecord | None:
        self._check_store(store)

        def job(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(SQL["queue_cancel"], {"task_id": task_id}).fetchone()
            if row is None:
                return None
            task = queued_record(row)
            task.status, task.updated_at = Status.CANCELLED, now
            conn.execute(SQL["store_insert"], task_params(task))
            return task

        return await self.database.write(job)

    async def depth(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            count: int = conn.execute(SQL["queue_depth"]).fetchone()[0]
            return count

        return await self.database.read(job)

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
        moved = await self.transfer_many(
            store,
            now=now,
            most=1,
            queue=queue,
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
            dispatched=dispatched,
        )
        if moved:
            self._faults.hit("after_dequeue")  # tests: the move committed, its answer lost
        return moved[0] if moved else None

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
        due = {"queue": queue, "now": now, "most": most}

        # One writer job for the batch (each hop to the writer thread costs GIL hand-offs), and
        # three statements for it: one promotes tasks that came due, one takes the tasks out of
        # the queue, one inserts them.
        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            conn.execute(SQL["promote_due"], {"queue": queue, "now": now})
            rows = conn.execute(SQL["dequeue_many"], due).fetchall()
            if not rows:
                return []
            self._faults.hit("after_reserve")  # the savepoint undoes the job if this raises
            rows.sort(key=lambda row: (-row[2], row[1]))  # priority descending, then FIFO
            moved: list[TaskRecord] = []
            for row in rows:
                task = queued_record(row)
                task.status = Status.DEQUEUED
                task.dequeued_at = task.updated_at = now
                task.lease_token, task.lease_expires_at = lease_token, lease_expires_at
                task.dispatched = dispatched
                moved.append(task)
            conn.executemany(SQL["store_insert"], [task_params(task) for task in moved])
            return moved

        return await self.database.write(job)

    async def hand_over(
        self, store: Store, *, now: int, most: int, lease_token: str, lease_expires_at: int
    ) -> list[TaskRecord]:
        self._check_store(store)

        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            rows = conn.execute(SQL["queue_hand_over"], {"most": most}).fetchall()
            moved = [handed_over(row, now, lease_token, lease_expires_at) for row in rows]
            conn.executemany(SQL["store_insert"], [task_params(task) for task in moved])
            return moved

        return await self.database.write(job)

    async def requeue(
        self, store: Store, task: TaskRecord, *, now: int, note: str | None, redrive: bool = False
    ) -> bool:
        self._check_store(store)
        fence = {"task_id": task.task_id, "lease_token": task.lease_token}

        def job(conn: sqlite3.Connection) -> bool:
            if redrive:
                row = conn.execute(SQL["redrive_delete"], {"task_id": task.task_id}).fetchone()
            else:
                row = conn.execute(SQL["requeue_delete"], fence).fetchone()
            if row is None:
                return False
            returned = stored_record(row)
            returned.error, returned.updated_at = note, now
            if redrive:
                returned.attempts, returned.scheduled_at = 0, None
            params = queue_params(returned)
            put = conn.execute(SQL["requeue_insert"], {**params, "sequence": returned.sequence})
            if put.fetchone() is None:  # its number is taken (see requeue_insert): a new one
                conn.execute(SQL["enqueue"], params).fetchone()
            return True

        return await self.database.write(job)

    async def purge_expired(self, *, now: int) -> None:
        params = {"now": now, "most": PURGE_BATCH_KEYS}
        for _ in range(PURGE_BATCHES):  # a job each: other writes go between them
            purged = await self.database.write(
                lambda conn: conn.execute(SQL["idempotency_purge"], params).rowcount
            )
            if purged < PURGE_BATCH_KEYS:
                break

    def _check_store(self, store: Store) -> None:
        if not (isinstance(store, SQLiteStore) and store.database is self.database):
            raise TypeError("a SQLite queue moves tasks only into the SQLite store of its file")

    async def ping(self) -> None:
        await self.database.read(lambda conn: conn.execute(SQL["ping"]).fetchone())

    async def close(self) -> None:
        self.database.close()


class SQLiteStore(Store):
    """The store as the ``tasks`` and ``task_executions`` tables of a :class:`SQLiteDatabase`."""

    def __init__(self, database: SQLiteDatabase) -> None:
        self.database = database

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

        def job(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            if execution is not None:
                conn.execute(SQL["execution_insert"], execution_params(execution))
            return stored_record(row)

        return await self.database.write(job)

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
    ) -> list[TaskRecord]:
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
            dialect="sqlite",
        )

        # One UPDATE for the batch: SQLite checks each row's condition as it updates it, so
        # each moves or stays exactly as its own compare-and-set would (the single writer
        # means nothing changes a row in between).
        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [stored_record(row) for row in conn.execute(sql, params)]

        return await self.database.write(job)

    async def insert_dequeued(self, tasks: list[TaskRecord]) -> set[str]:
        def job(conn: sqlite3.Connection) -> set[str]:
            return {
                task.task_id
                for task in tasks
                if conn.execute(SQL["store_insert"], task_params(task)).rowcount == 1
            }

        return await self.database.write(job)

    async def get(self, task_id: str) -> TaskRecord | None:
        def job(conn: sqlite3.Connection) -> TaskRecord | None:
            row = conn.execute(SQL["store_get"], {"task_id": task_id}).fetchone()
            return None if row is None else stored_record(row)

        return await self.database.read(job)

    async def expired_leases(self, status: Status, *, now: int, limit: int) -> list[TaskRecord]:
        params = {"status": status.value, "now": now, "limit": limit}

        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [stored_record(row) for row in conn.execute(SQL["store_expired_leases"], params)]

        return await self.database.read(job)

    async def dequeued_under(self, lease_token: str) -> list[TaskRecord]:
        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            rows = conn.execute(SQL["store_dequeued_under"], {"lease_token": lease_token})
            return [stored_record(row) for row in rows]

        return await self.database.read(job)

    async def remove_queued(self, task_id: str, lease_token: str) -> bool:
        params = {"task_id": task_id, "lease_token": lease_token}

        def job(conn: sqlite3.Connection) -> bool:
            return conn.execute(SQL["store_delete_returning"], params).rowcount == 1

        return await self.database.write(job)

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

        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [stored_record(row) for row in conn.execute(query, params)]

        return await self.database.read(job)

    async def due_retries(self, queue: str, *, now: int, limit: int) -> list[TaskRecord]:
        params = {"queue": queue, "now": now, "limit": limit}

        def job(conn: sqlite3.Connection) -> list[TaskRecord]:
            return [stored_record(row) for row in conn.execute(SQL["store_due_retries"], params)]

        return await self.database.read(job)

    async def queue_activity(self, *, since: int) -> dict[str, QueueActivity]:
        def job(conn: sqlite3.Connection) -> dict[str, QueueActivity]:
            rows = conn.execute(SQL["store_queue_activity"], {"since": since}).fetchall()
            return {name: QueueActivity(busy or 0, attempts) for name, busy, attempts in rows}

        return await self.database.read(job)

    async def paused_queues(self) -> set[str]:
        def job(conn: sqlite3.Connection) -> set[str]:
            return {name for (name,) in conn.execute(SQL["queues_paused"])}

        return await self.database.read(job)

    async def take_dispatch_token(self, queue: str, *, rate: float, burst: float, now: int) -> bool:
        params = {"name": queue, "rate": rate, "burst": burst, "now": now}

        def job(conn: sqlite3.Connection) -> bool:
            return conn.execute(SQL["take_dispatch_token"], params).fetchone() is not None

        return await self.database.write(job)

    async def give_back_dispatch_token(self, queue: str, *, burst: float) -> None:
        params = {"name": queue, "burst": burst}
        await self.database.write(
            lambda conn: conn.execute(SQL["give_back_dispatch_token"], params)
        )

    async def set_paused(self, queue: str, paused: bool, *, now: int) -> None:
        params = {"name": queue, "paused": paused, "now": now}
        await self.database.write(lambda conn: conn.execute(SQL["queue_set_paused"], params))

    async def record_depth_samples(self, samples: list[DepthSample], *, prune_before: int) -> None:
        rows = [{"queue": s.queue, "sampled_at": s.sampled_at, "depth": s.depth} for s in samples]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(SQL["depth_sample_upsert"], rows)
            conn.execute(SQL["depth_sample_prune"], {"before": prune_before})

        await self.database.write(job)

    async def heartbeat(
        self, process: ProcessRecord, *, since: int, prune_before: int
    ) -> list[ProcessRecord]:
        def job(conn: sqlite3.Connection) -> list[ProcessRecord]:
            conn.execute(SQL["process_upsert"], msgspec.structs.asdict(process))
            conn.execute(SQL["process_prune"], {"before": prune_before})
            rows = conn.execute(SQL["process_list"], {"since": since})
            return [ProcessRecord(*row) for row in rows]

        return await self.database.write(job)

    async def forget_process(self, process_id: str) -> None:
        await self.database.write(
            lambda conn: conn.execute(SQL["process_delete"], {"process_id": process_id})
        )

    async def queue_sequence(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            sequence: int = conn.execute(SQL["queue_sequence"]).fetchone()[0]
            return sequence

        return await self.database.read(job)

    async def store_id(self) -> str:
        def job(conn: sqlite3.Connection) -> str:
            store_id: str = conn.execute(SQL["store_id"]).fetchone()[0]
            return store_id

        return await self.database.read(job)

    async def depth_samples(self, *, since: int) -> list[DepthSample]:
        def job(conn: sqlite3.Connection) -> list[DepthSample]:
            rows = conn.execute(SQL["depth_sample_list"], {"since": since})
            return [DepthSample(queue, sampled_at, depth) for queue, sampled_at, depth in rows]

        return await self.database.read(job)

    async def executions(self, task_id: str) -> list[ExecutionRecord]:
        def job(conn: sqlite3.Connection) -> list[ExecutionRecord]:
            rows = conn.execute(SQL["execution_list"], {"task_id": task_id})
            return [execution_record(row) for row in rows]

        return await self.database.read(job)

    async def count_by_status(self, queue: str | None = None) -> dict[Status, int]:
        def job(conn: sqlite3.Connection) -> dict[Status, int]:
            if queue is None:
                rows = conn.execute(SQL["store_count_by_status"]).fetchall()
            else:
                rows = conn.execute(
                    SQL["store_count_by_status_in_queue"], {"queue": queue}
                ).fetchall()
            return {Status(status): count for status, count in rows}

        return await self.database.read(job)

    async def ping(self) -> None:
        await self.database.read(lambda conn: conn.execute(SQL["ping"]).fetchone())

    async def close(self) -> None:
        self.database.close()


def claim_key(
    conn: sqlite3.Connection, claim: IdempotencyClaim, task: TaskRecord
) -> IdempotentReplay | None:
    """Claim ``claim.key`` for ``task`` in the caller's transaction, or return the live claim."""
    claimed = conn.execute(
        SQL["idempotency_claim"],
        {
            "key": claim.key,
            "request_hash": claim.request_hash,
            "task_id": task.task_id,
            "expires_at": claim.expires_at,
            "now": task.created_at,
        },
    ).fetchone()
    if claimed is not None:
        return None
    request_hash, task_id = conn.execute(SQL["idempotency_get"], {"key": claim.key}).fetchone()
    return IdempotentReplay(task_id=task_id, request_hash=request_hash)
